//! One phone conversation, sans-IO: the caller's turns (from the media path's voice and
//! turn detection), provider events and the clock go in; [`Action`]s come out for the call
//! to carry out (provider requests, audio to play, marks, clears, tools, hang-up). Tests drive
//! it with a virtual clock.
//!
//! A reply is a queue of sentences. Tokens from the language model are cut into sentences as
//! they stream; each sentence is synthesised as soon as it is complete, and its audio is
//! played strictly in order (audio of a later sentence that arrives early waits). Every
//! sentence is framed by two playout marks, so the conversation learns when its audio began
//! and finished playing: that is how a barge-in knows what the caller actually heard.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use cxb_media::Timestamp;
use cxb_media::turn::TurnEvent;
use serde::Serialize;

use crate::config::{BotConfig, Interruptions, ToolKind};
use crate::provider::{AudioFormat, ChatRequest, Event, LlmEvent, Message, Role, SttEvent, ToolCall, ToolSpec, TtsEvent};

/// How long to wait for the final transcript after the caller's turn ended before taking
/// what there is.
const FINAL_WAIT: Duration = Duration::from_millis(1500);

/// Keys a call's transcript keeps at most (a stuck key or a fax tone cannot grow a result).
pub const MAX_DTMF: u32 = 256;

/// How long after a key the caller's key entry counts as complete (`#` completes it at once).
pub const KEY_WAIT: Duration = Duration::from_secs(2);

/// Most keys in one entry.
const MAX_ENTRY: usize = 32;

/// What the call must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Ask speech-to-text for the final transcript of the audio so far.
    SttFinalize,
    /// Start a language model request (replacing any running one).
    Llm {
        /// The request's id; its events carry it.
        turn: u64,
        /// The context and tools.
        request: ChatRequest,
    },
    /// Cancel the running language model request.
    CancelLlm,
    /// Start synthesising a sentence.
    Synthesize {
        /// The sentence's id; its events carry it.
        sentence: u64,
        /// The words.
        text: String,
    },
    /// Cancel every running synthesis.
    CancelTts,
    /// Queue this audio (in the TTS provider's format) for playing.
    Play(Vec<u8>),
    /// Queue a mark after the audio queued so far; report it with
    /// [`Conversation::on_mark`] when playout reaches it.
    Mark(u64),
    /// Drop the audio queued for playing and tell the carrier to drop what it buffered.
    ClearPlayout,
    /// Run a tool with I/O; its result comes back as [`Event::Tool`].
    RunTool(ToolCall),
    /// Press these keys (`0`-`9`, `*`, `#`, `A`-`D`) after the audio queued so far.
    SendDtmf(String),
    /// Pass the caller to people (the Agent Desk) with why and what they need; the transcript
    /// so far goes with it.
    Handoff {
        /// Why, as the model said.
        reason: String,
        /// What the caller needs, for the person who takes over.
        summary: String,
    },
    /// Hand the call over to `destination`, then end it.
    Transfer {
        /// A number or SIP URI.
        destination: String,
    },
    /// End the call.
    Hangup {
        /// Why, for the call's result.
        reason: String,
    },
}

/// One line of the transcript.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    /// `caller`, `bot`, `agent` (a person from the Agent Desk who took the call over) or
    /// `dtmf` (a key the caller pressed: `text` is the digit).
    pub role: &'static str,
    /// What was said (for the bot: what the caller heard).
    pub text: String,
    /// Milliseconds from the start of the call.
    pub at_ms: u64,
    /// The bot was cut off by the caller.
    pub interrupted: bool,
}

/// The latency of one answered turn, in milliseconds from the end of the caller's speech.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TurnLatency {
    /// End of speech to the final transcript.
    pub final_transcript_ms: u64,
    /// End of speech to the first token of the reply.
    pub first_token_ms: u64,
    /// End of speech to the first synthesised audio.
    pub first_audio_ms: u64,
    /// End of speech to the first frame of the reply on the wire.
    pub first_frame_ms: u64,
}

/// What the providers were used for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Language model tokens read.
    pub prompt_tokens: u64,
    /// Language model tokens written.
    pub completion_tokens: u64,
    /// Of the tokens read, those served from the provider's prompt cache.
    pub cached_tokens: u64,
    /// Of the tokens read, those written into the provider's prompt cache.
    pub cache_write_tokens: u64,
    /// Requests that read from the prompt cache.
    pub cache_hits: u64,
    /// Characters sent to text-to-speech.
    pub tts_characters: u64,
    /// Language model requests.
    pub llm_requests: u64,
}

/// How the conversation ended, as far as it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Still going.
    Ongoing,
    /// The bot hung up.
    Hangup,
    /// The call was handed over.
    Transferred,
    /// A machine answered and the message was left.
    Voicemail,
}

#[derive(Debug, Clone, PartialEq)]
enum After {
    Listen,
    Hangup(String),
    Transfer(String),
}

#[derive(Debug)]
struct Sentence {
    id: u64,
    text: String,
    /// Audio that arrived before this sentence's turn to play.
    waiting: Vec<Vec<u8>>,
    synthesised: bool,
    /// Bytes queued for playing.
    queued: usize,
    started: Option<Timestamp>,
}

#[derive(Debug)]
struct Reply {
    /// The language model request feeding it, while one runs.
    llm: Option<u64>,
    /// Tokens not yet making a sentence.
    pending: String,
    /// Sentences not yet fully played, in order.
    sentences: VecDeque<Sentence>,
    /// How many leading sentences have all their audio queued for playing; audio of the
    /// sentence at this index plays as it arrives, later ones wait.
    feeding: usize,
    /// Words already put into the model's context (before a tool call).
    context_words: usize,
    /// Text of the sentences fully played.
    heard: String,
    /// Text sent to synthesis.
    said: String,
    tool_calls: Vec<ToolCall>,
    tools_running: usize,
    tool_results: Vec<Message>,
    after: After,
    started_at: Timestamp,
    /// For replies to the caller: when their speech ended, and the latency so far.
    latency: Option<(Timestamp, TurnLatency)>,
    /// Whether the reply goes into the language model's context.
    in_context: bool,
    /// The turn's span (replies to the caller only), a child of the call's; its stage
    /// latencies are logged in it when the reply is recorded.
    span: tracing::Span,
}

impl Reply {
    fn new(now: Timestamp, after: After) -> Reply {
        Reply {
            llm: None,
            pending: String::new(),
            sentences: VecDeque::new(),
            feeding: 0,
            context_words: 0,
            heard: String::new(),
            said: String::new(),
            tool_calls: Vec::new(),
            tools_running: 0,
            tool_results: Vec::new(),
            after,
            started_at: now,
            latency: None,
            in_context: true,
            span: tracing::Span::none(),
        }
    }

    fn is_done(&self) -> bool {
        self.llm.is_none() && self.tools_running == 0 && self.pending.trim().is_empty() && self.sentences.is_empty()
    }
}

/// The conversation of one call.
#[derive(Debug)]
pub struct Conversation {
    bot_greeting: String,
    idle: crate::config::Idle,
    voicemail_message: String,
    tools: HashMap<String, (ToolKind, Option<String>)>,
    tool_specs: Vec<ToolSpec>,
    format: AudioFormat,
    messages: Vec<Message>,
    transcript: Vec<Line>,
    actions: VecDeque<Action>,
    start: Timestamp,
    max_end: Timestamp,
    next_id: u64,
    caller_text: String,
    caller_started: Option<Timestamp>,
    caller_speaking: bool,
    /// The caller's turn ended at (speech end, decided) and the final transcript is awaited.
    awaiting_final: Option<(Timestamp, Timestamp)>,
    /// When the caller's last speech ended.
    speech_ended: Option<Timestamp>,
    reply: Option<Reply>,
    idle_at: Option<Timestamp>,
    reprompts: u32,
    ending: Ending,
    hung_up: bool,
    latencies: Vec<TurnLatency>,
    /// Keys pressed so far (bounded by [`MAX_DTMF`]).
    dtmf: u32,
    /// The key entry in progress, and when it is complete.
    keys: String,
    keys_at: Option<Timestamp>,
    usage: Usage,
    barge_ins: u32,
    interruptions: Interruptions,
    /// The caller's speech over a reply, until its turn is taken.
    overlap: Option<Overlap>,
    /// Barge-ins whose turn turned out to be only acknowledgement or noise.
    false_barge_ins: u32,
    /// Turns over a reply that did not stop it, yet said more than an acknowledgement.
    missed_barge_ins: u32,
    /// Acknowledgements over a reply that let it go on.
    backchannels: u32,
    /// A person from the Agent Desk is talking with the caller: the bot is silent.
    human: bool,
}

/// The caller speaking over a reply: how much voiced speech so far, and whether it stopped
/// the reply.
#[derive(Debug, Clone, Copy)]
struct Overlap {
    voiced_ms: u64,
    barged: bool,
}

impl Conversation {
    /// A conversation for `bot`, whose TTS produces `format`, with these tool specs (the
    /// tools executor's), starting at `now`.
    pub fn new(bot: &BotConfig, format: AudioFormat, tool_specs: Vec<ToolSpec>, now: Timestamp) -> Conversation {
        let tools = bot.tools.iter().map(|t| (t.name().to_string(), (t.kind, t.transfer_to.clone()))).collect();
        let mut messages = Vec::new();
        if !bot.system_prompt.is_empty() {
            messages.push(Message::text(Role::System, bot.system_prompt.clone()));
        }
        Conversation {
            bot_greeting: bot.greeting.clone(),
            idle: bot.idle.clone(),
            voicemail_message: bot.answering_machine.voicemail_message.clone(),
            tools,
            tool_specs,
            format,
            messages,
            transcript: Vec::new(),
            actions: VecDeque::new(),
            start: now,
            max_end: now + Duration::from_secs(u64::from(bot.max_call_seconds.max(1))),
            next_id: 1,
            caller_text: String::new(),
            caller_started: None,
            caller_speaking: false,
            awaiting_final: None,
            speech_ended: None,
            reply: None,
            idle_at: None,
            reprompts: 0,
            ending: Ending::Ongoing,
            hung_up: false,
            latencies: Vec::new(),
            dtmf: 0,
            keys: String::new(),
            keys_at: None,
            usage: Usage::default(),
            barge_ins: 0,
            interruptions: bot.interruptions.clone(),
            overlap: None,
            false_barge_ins: 0,
            missed_barge_ins: 0,
            backchannels: 0,
            human: false,
        }
    }

    /// The call is answered: the greeting is queued (or, with none, the bot listens and the
    /// idle timer runs).
    pub fn start(&mut self, now: Timestamp) {
        if self.bot_greeting.trim().is_empty() {
            self.idle_at = Some(now + self.reprompt_after());
        } else {
            let greeting = self.bot_greeting.clone();
            self.say(now, &greeting, After::Listen);
        }
    }

    /// Answering-machine detection found a machine (the call holds the greeting's audio until
    /// the verdict, so nothing was heard). The greeting is dropped and the outcome is
    /// voicemail. With `leave_message` the bot's voicemail message (or, with none, its
    /// greeting) is spoken and the call ends after it (hang-up reason `voicemail_left`; the
    /// call decides when the audio plays, e.g. after the beep); else the call ends at once
    /// (`machine_detected`).
    pub fn on_machine(&mut self, now: Timestamp, leave_message: bool) {
        if self.hung_up {
            return;
        }
        if !leave_message {
            self.leave_voicemail(now, "", "machine_detected");
            return;
        }
        let message =
            if self.voicemail_message.trim().is_empty() { &self.bot_greeting } else { &self.voicemail_message };
        let message = message.clone();
        self.leave_voicemail(now, &message, "voicemail_left");
    }

    /// The next action to carry out.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The transcript so far.
    pub fn transcript(&self) -> &[Line] {
        &self.transcript
    }

    /// Per-turn latencies of the answered turns.
    pub fn latencies(&self) -> &[TurnLatency] {
        &self.latencies
    }

    /// Provider usage so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// How the conversation ended, if it did.
    pub fn ending(&self) -> Ending {
        self.ending
    }

    /// Times the caller cut the bot off.
    pub fn barge_ins(&self) -> u32 {
        self.barge_ins
    }

    /// Barge-ins that were only acknowledgement or noise, turns over the bot that said more
    /// than an acknowledgement without stopping it, and acknowledgements it talked on through.
    pub fn interruption_counts(&self) -> (u32, u32, u32) {
        (self.false_barge_ins, self.missed_barge_ins, self.backchannels)
    }

    /// Whether the bot is speaking or about to (a reply is in progress).
    pub fn bot_active(&self) -> bool {
        self.reply.is_some()
    }

    /// When [`Conversation::on_timeout`] should next run.
    pub fn deadline(&self) -> Option<Timestamp> {
        let waiting = self.awaiting_final.map(|(_, decided)| decided + FINAL_WAIT);
        let idle = self.idle_at.filter(|_| self.reply.is_none() && !self.caller_speaking && !self.human);
        [Some(self.max_end), waiting, idle, self.keys_at].into_iter().flatten().filter(|_| !self.hung_up).min()
    }

    /// The caller's turn detection.
    pub fn on_turn(&mut self, now: Timestamp, event: TurnEvent) {
        if self.hung_up {
            return;
        }
        match event {
            TurnEvent::Started { at } => {
                self.caller_speaking = true;
                self.caller_started.get_or_insert(at);
                self.idle_at = None;
                if self.interruptible() {
                    self.overlap = Some(Overlap { voiced_ms: ms_between(at, now), barged: false });
                    self.judge_overlap(now, "");
                }
            }
            TurnEvent::Ended { speech_ended, decided_at, .. } => {
                self.caller_speaking = false;
                self.speech_ended = Some(speech_ended);
                self.awaiting_final = Some((speech_ended, decided_at));
                self.actions.push_back(Action::SttFinalize);
                self.try_commit(now, false);
            }
        }
    }

    /// A provider's event.
    pub fn on_event(&mut self, now: Timestamp, event: Event) {
        if self.hung_up {
            return;
        }
        match event {
            Event::Stt(SttEvent::Final { text, end_of_turn }) => {
                let text = text.trim();
                if !text.is_empty() {
                    if !self.caller_text.is_empty() {
                        self.caller_text.push(' ');
                    }
                    self.caller_text.push_str(text);
                }
                self.judge_overlap(now, "");
                self.try_commit(now, end_of_turn);
            }
            Event::Stt(SttEvent::UtteranceEnd) => self.try_commit(now, true),
            Event::Stt(SttEvent::Interim { text }) => {
                self.judge_overlap(now, &text);
            }
            // The engine's turn detection reads these before the conversation does.
            Event::Stt(SttEvent::Error(_)) | Event::TurnVerdict { .. } => {}
            Event::Llm { turn, event } => self.on_llm(now, turn, event),
            Event::Tts { sentence, event } => self.on_tts(now, sentence, event),
            Event::Tool { call_id, output } => {
                let Some(reply) = self.reply.as_mut() else { return };
                if !reply.tool_calls.iter().any(|c| c.id == call_id) {
                    return;
                }
                reply.tools_running = reply.tools_running.saturating_sub(1);
                let mut message = Message::text(Role::Tool, output.content);
                message.tool_call_id = Some(call_id);
                reply.tool_results.push(message);
                self.continue_after_tools(now);
            }
        }
    }

    /// A 20 ms frame of the caller's audio, `voiced` or not: speech over a reply stops it once
    /// it has lasted the bot's `interruptions.min_speech_ms`. Whether the reply stopped.
    pub fn on_caller_frame(&mut self, now: Timestamp, voiced: bool) -> bool {
        let Some(o) = self.overlap.as_mut().filter(|o| !o.barged) else { return false };
        if voiced {
            o.voiced_ms += 20;
        }
        self.judge_overlap(now, "")
    }

    /// Whether a reply is in progress that the caller's speech may stop (a goodbye, a
    /// voicemail message or a hand-over is not stopped).
    fn interruptible(&self) -> bool {
        self.reply.as_ref().is_some_and(|r| r.after == After::Listen || r.llm.is_some() || r.tools_running > 0)
    }

    /// Stops the reply the caller is speaking over once their speech has lasted long enough
    /// or said enough words that are not acknowledgements (`interim`: the STT's words not yet
    /// final). Whether it stopped it.
    fn judge_overlap(&mut self, now: Timestamp, interim: &str) -> bool {
        let Some(o) = self.overlap.filter(|o| !o.barged) else { return false };
        if !self.interruptible() {
            return false;
        }
        let i = &self.interruptions;
        let long_enough = o.voiced_ms >= u64::from(i.min_speech_ms);
        let words = i.min_words > 0 && i.substantive_words(&self.caller_text) + i.substantive_words(interim) >= i.min_words as usize;
        if !(long_enough || words) {
            return false;
        }
        self.overlap = Some(Overlap { barged: true, ..o });
        if !self.caller_speaking {
            // The words came only after the caller's speech: the bot talked over all of it.
            self.missed_barge_ins += 1;
        }
        self.barge_in(now);
        true
    }

    /// The caller pressed a key (`0`-`9`, `*`, `#`, `A`-`D`; anything else is ignored). It
    /// goes into the transcript (at most [`MAX_DTMF`] per call) and counts as the caller's
    /// activity for the re-prompt timer. Keys make an entry, complete at `#` or [`KEY_WAIT`]
    /// after the last key; the language model reads it as the caller's message
    /// `keypad: 12#` (so a script's intent can have the keyword `1`). An entry completed while
    /// the bot answers or the caller speaks goes with the caller's next words.
    pub fn on_dtmf(&mut self, now: Timestamp, digit: char) {
        if self.hung_up || !matches!(digit, '0'..='9' | '*' | '#' | 'A'..='D') || self.dtmf >= MAX_DTMF {
            return;
        }
        self.dtmf += 1;
        self.transcript.push(Line { role: "dtmf", text: digit.to_string(), at_ms: ms_between(self.start, now), interrupted: false });
        if self.idle_at.is_some() {
            self.idle_at = Some(now + self.reprompt_after());
        }
        if self.keys.len() < MAX_ENTRY {
            self.keys.push(digit);
        }
        self.keys_at = Some(if digit == '#' { now } else { now + KEY_WAIT });
    }

    /// The key entry is complete: the bot answers it when it is free; else the entry waits
    /// for the caller's next words.
    fn keys_done(&mut self, now: Timestamp) {
        self.keys_at = None;
        if self.keys.is_empty() || self.reply.is_some() || self.caller_speaking || self.awaiting_final.is_some() {
            return;
        }
        let text = format!("keypad: {}", std::mem::take(&mut self.keys));
        self.speech_ended = Some(now);
        self.answer(now, text);
    }

    /// Playout reached mark `id`.
    pub fn on_mark(&mut self, now: Timestamp, id: u64) {
        let Some(reply) = self.reply.as_mut() else { return };
        let (sentence, end) = (id / 2, id % 2 == 1);
        if !end {
            if let Some(s) = reply.sentences.iter_mut().find(|s| s.id == sentence) {
                s.started = Some(now);
                if let Some((ended, latency)) = reply.latency.as_mut().filter(|(_, l)| l.first_frame_ms == 0) {
                    latency.first_frame_ms = ms_between(*ended, now).max(1);
                }
            }
            return;
        }
        if reply.sentences.front().is_none_or(|s| s.id != sentence) {
            return;
        }
        let done = reply.sentences.pop_front().map(|s| s.text).unwrap_or_default();
        reply.feeding = reply.feeding.saturating_sub(1);
        push_words(&mut reply.heard, &done);
        self.advance(now);
    }

    /// Runs what is due at `now`: the final-transcript wait, idle re-prompts, the call's
    /// time limit.
    pub fn on_timeout(&mut self, now: Timestamp) {
        if self.hung_up {
            return;
        }
        if now >= self.max_end {
            self.hang_up("max_duration");
            return;
        }
        if self.keys_at.is_some_and(|at| now >= at) {
            self.keys_done(now);
        }
        if self.awaiting_final.is_some_and(|(_, decided)| now >= decided + FINAL_WAIT) {
            self.try_commit(now, true);
            self.awaiting_final = None;
            // No words: speech over the bot that stopped it was noise.
            if self.overlap.take().is_some_and(|o| o.barged) {
                self.false_barge_ins += 1;
            }
            // No words came (a cough, noise): the bot is still listening, and the silence
            // counts again towards a re-prompt.
            if self.reply.is_none() && !self.caller_speaking {
                self.idle_at = Some(now + self.reprompt_after());
            }
        }
        if self.reply.is_none() && !self.caller_speaking && !self.human && self.idle_at.is_some_and(|at| now >= at) {
            self.idle_at = None;
            if self.reprompts < self.idle.max_reprompts {
                self.reprompts += 1;
                let text = self.idle.reprompt.clone();
                self.say(now, &text, After::Listen);
            } else {
                let text = self.idle.goodbye.clone();
                self.say(now, &text, After::Hangup("idle".into()));
            }
        }
    }

    /// Ends the conversation from outside (the call ended): a reply in progress is recorded
    /// as far as the caller heard it.
    pub fn finish(&mut self, now: Timestamp) {
        if let Some(mut reply) = self.reply.take() {
            self.hear_front(&mut reply, now);
            self.record_reply(now, reply, true);
        }
        self.hung_up = true;
    }

    /// A person from the Agent Desk joined the call: the bot stops at once (what the caller
    /// heard of its reply stays in the transcript) and says nothing, re-prompts nothing, until
    /// they leave. The caller's words still go into the transcript and the model's context.
    pub fn human_joined(&mut self, now: Timestamp) {
        if self.hung_up || self.human {
            return;
        }
        self.human = true;
        self.idle_at = None;
        self.overlap = None;
        if let Some(mut reply) = self.reply.take() {
            self.cancel(&reply);
            self.actions.push_back(Action::ClearPlayout);
            self.hear_front(&mut reply, now);
            self.record_reply(now, reply, true);
        }
    }

    /// What the person from the Agent Desk said (their speech-to-text's final words), begun
    /// at `at`: a transcript line of role `agent`, and the model's context should the bot take
    /// the call back.
    pub fn human_said(&mut self, at: Timestamp, text: &str) {
        let text = text.trim();
        if !self.human || text.is_empty() {
            return;
        }
        self.transcript.push(Line { role: "agent", text: text.to_string(), at_ms: ms_between(self.start, at), interrupted: false });
        self.messages.push(Message::text(Role::Assistant, text.to_string()));
    }

    /// The person left while the caller stays: the bot listens again.
    pub fn human_left(&mut self, now: Timestamp) {
        if !self.human {
            return;
        }
        self.human = false;
        if !self.hung_up && !self.caller_speaking {
            self.idle_at = Some(now + self.reprompt_after());
        }
    }

    /// Whether a person from the Agent Desk has the call.
    pub fn human(&self) -> bool {
        self.human
    }

    fn reprompt_after(&self) -> Duration {
        Duration::from_secs(u64::from(self.idle.reprompt_after_seconds.max(1)))
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Takes the caller's words as a turn when the turn is over and there are words.
    fn try_commit(&mut self, now: Timestamp, end_of_turn: bool) {
        let turn_over = end_of_turn || self.awaiting_final.is_some();
        if !turn_over || self.caller_text.is_empty() || self.caller_speaking && !end_of_turn {
            return;
        }
        self.awaiting_final = None;
        let text = std::mem::take(&mut self.caller_text);
        let at = self.caller_started.take().unwrap_or(now);
        self.transcript.push(Line { role: "caller", text: text.clone(), at_ms: ms_between(self.start, at), interrupted: false });
        if let Some(o) = self.overlap.take() {
            let backchannel = self.interruptions.is_backchannel(&text);
            if o.barged && backchannel {
                self.false_barge_ins += 1;
            } else if !o.barged && self.interruptible() {
                if backchannel {
                    // "Mm-hmm" while the bot talks: in the transcript, not answered.
                    self.backchannels += 1;
                    return;
                }
                self.missed_barge_ins += 1;
                self.barge_in(now);
            }
        }
        // Keys the caller pressed before these words go with them.
        let text = match std::mem::take(&mut self.keys) {
            keys if keys.is_empty() => text,
            keys => {
                self.keys_at = None;
                format!("keypad: {keys}\n{text}")
            }
        };
        self.answer(now, text);
    }

    /// The caller's message `text`: the bot answers it (a reply not yet begun is replaced by
    /// one answering everything).
    fn answer(&mut self, now: Timestamp, text: String) {
        self.messages.push(Message::text(Role::User, text));
        if self.human {
            // The person on the call answers, not the bot.
            return;
        }
        self.reprompts = 0;
        self.idle_at = None;
        if let Some(old) = self.reply.take() {
            // The caller said more before the bot's answer began: answer everything at once.
            self.cancel(&old);
            self.record_reply(now, old, true);
        }
        let ended = self.speech_ended.unwrap_or(now);
        let latency = TurnLatency { final_transcript_ms: ms_between(ended, now), ..TurnLatency::default() };
        let mut reply = Reply::new(now, After::Listen);
        reply.latency = Some((ended, latency));
        reply.span = tracing::info_span!("turn", n = self.latencies.len() + 1);
        self.reply = Some(reply);
        self.request_llm();
    }

    fn request_llm(&mut self) {
        let turn = self.id();
        let Some(reply) = self.reply.as_mut() else { return };
        reply.llm = Some(turn);
        self.usage.llm_requests += 1;
        let request = ChatRequest { messages: self.messages.clone(), tools: self.tool_specs.clone() };
        self.actions.push_back(Action::Llm { turn, request });
    }

    fn on_llm(&mut self, now: Timestamp, turn: u64, event: LlmEvent) {
        let Some(reply) = self.reply.as_mut().filter(|r| r.llm == Some(turn)) else { return };
        match event {
            LlmEvent::Token(token) => {
                if let Some((ended, latency)) = reply.latency.as_mut().filter(|(_, l)| l.first_token_ms == 0) {
                    latency.first_token_ms = ms_between(*ended, now).max(1);
                }
                reply.pending.push_str(&token);
                self.cut_sentences(false);
            }
            LlmEvent::ToolCall(call) => self.on_tool_call(now, call),
            LlmEvent::Done { usage } => {
                self.usage.prompt_tokens += usage.prompt_tokens;
                self.usage.completion_tokens += usage.completion_tokens;
                self.usage.cached_tokens += usage.cached_tokens;
                self.usage.cache_write_tokens += usage.cache_write_tokens;
                self.usage.cache_hits += u64::from(usage.cached_tokens > 0);
                reply.llm = None;
                self.cut_sentences(true);
                self.continue_after_tools(now);
            }
            LlmEvent::Error(_) => {
                reply.llm = None;
                reply.tool_calls.clear();
                reply.tools_running = 0;
                self.cut_sentences(true);
                if self.reply.as_ref().is_some_and(|r| r.said.is_empty() && r.sentences.is_empty()) {
                    self.reply = None;
                    self.say(now, "Sorry, I'm having trouble right now. Could you say that again?", After::Listen);
                    if let Some(r) = self.reply.as_mut() {
                        r.in_context = false;
                    }
                } else {
                    self.advance(now);
                }
            }
        }
    }

    fn on_tool_call(&mut self, now: Timestamp, call: ToolCall) {
        let kind = self.tools.get(&call.name).cloned();
        let Some(reply) = self.reply.as_mut() else { return };
        reply.tool_calls.push(call.clone());
        let args: serde_json::Value = serde_json::from_str(&call.arguments).unwrap_or(serde_json::Value::Null);
        let answer = |reply: &mut Reply, content: &str| {
            let mut message = Message::text(Role::Tool, content);
            message.tool_call_id = Some(call.id.clone());
            reply.tool_results.push(message);
        };
        match kind {
            Some((ToolKind::EndCall, _)) => {
                let reason = args.get("reason").and_then(|r| r.as_str()).unwrap_or("end_call");
                reply.after = After::Hangup(format!("end_call: {reason}"));
                answer(reply, "The call will end after your reply.");
            }
            Some((ToolKind::TransferCall, default)) => {
                let destination = args.get("destination").and_then(|d| d.as_str()).map(str::to_string).or(default);
                match destination {
                    Some(d) if !d.trim().is_empty() => {
                        reply.after = After::Transfer(d);
                        answer(reply, "The call will be transferred after your reply.");
                    }
                    _ => answer(reply, "No destination to transfer to."),
                }
            }
            Some((ToolKind::Handoff, default)) => {
                let text = |k: &str| args.get(k).and_then(|v| v.as_str()).unwrap_or_default().trim().chars().take(2_000).collect::<String>();
                self.actions.push_back(Action::Handoff { reason: text("reason"), summary: text("summary") });
                match default.filter(|d| !d.trim().is_empty()) {
                    Some(d) => {
                        reply.after = After::Transfer(d);
                        answer(reply, "The team has the request. The call will be transferred to a person after your reply: tell the caller.");
                    }
                    None => answer(reply, "The team has the request and will follow up. Tell the caller someone will get back to them, then ask if there is anything else."),
                }
            }
            Some((ToolKind::SendDtmf, _)) => {
                let digits = args.get("digits").and_then(|d| d.as_str()).unwrap_or_default().trim();
                if !digits.is_empty() && digits.len() <= 32 && digits.chars().all(|c| matches!(c, '0'..='9' | '*' | '#' | 'A'..='D')) {
                    self.actions.push_back(Action::SendDtmf(digits.to_string()));
                    self.transcript.push(Line { role: "bot_dtmf", text: digits.to_string(), at_ms: ms_between(self.start, now), interrupted: false });
                    answer(reply, &format!("Pressed {digits}."));
                } else {
                    answer(reply, "`digits` must be 1 to 32 of 0-9, *, #, A-D.");
                }
            }
            Some((ToolKind::DetectedVoicemail, _)) => {
                let message = self.voicemail_message.clone();
                self.leave_voicemail(now, &message, "voicemail");
            }
            Some((ToolKind::SearchKnowledge | ToolKind::Http, _)) => {
                reply.tools_running += 1;
                self.actions.push_back(Action::RunTool(call));
            }
            None => answer(reply, &format!("There is no tool named `{}`.", call.name)),
        }
    }

    /// When the language model is done and every tool has answered: ask it again with the
    /// results, or finish the reply.
    fn continue_after_tools(&mut self, now: Timestamp) {
        let Some(reply) = self.reply.as_mut() else { return };
        if reply.llm.is_some() || reply.tools_running > 0 {
            return;
        }
        if reply.tool_calls.is_empty() {
            self.advance(now);
            return;
        }
        let words: Vec<&str> = reply.said.split_whitespace().skip(reply.context_words).collect();
        let mut assistant = Message::text(Role::Assistant, words.join(" "));
        assistant.tool_calls = std::mem::take(&mut reply.tool_calls);
        let results = std::mem::take(&mut reply.tool_results);
        let needs_answer = assistant.tool_calls.iter().any(|c| {
            // A handoff without a transfer: the model then tells the caller what happens next.
            matches!(self.tools.get(&c.name), Some((ToolKind::SearchKnowledge | ToolKind::Http, _) | (ToolKind::Handoff, None)))
        });
        reply.context_words = reply.said.split_whitespace().count();
        self.messages.push(assistant);
        self.messages.extend(results);
        if needs_answer {
            self.request_llm();
        } else {
            self.advance(now);
        }
    }

    /// Moves complete sentences from the token buffer to synthesis; `all` takes the rest too.
    fn cut_sentences(&mut self, all: bool) {
        let Some(reply) = self.reply.as_mut() else { return };
        let mut cuts = Vec::new();
        loop {
            let end = sentence_end(&reply.pending).or_else(|| (all && !reply.pending.trim().is_empty()).then_some(reply.pending.len()));
            let Some(end) = end else { break };
            let rest = reply.pending.split_off(end);
            let text = std::mem::replace(&mut reply.pending, rest).trim().to_string();
            if !text.is_empty() {
                cuts.push(text);
            }
        }
        if all {
            reply.pending.clear();
        }
        for text in cuts {
            self.queue_sentence(text);
        }
    }

    fn queue_sentence(&mut self, text: String) {
        let id = self.id();
        let Some(reply) = self.reply.as_mut() else { return };
        push_words(&mut reply.said, &text);
        self.usage.tts_characters += text.chars().count() as u64;
        reply.sentences.push_back(Sentence { id, text: text.clone(), waiting: Vec::new(), synthesised: false, queued: 0, started: None });
        self.actions.push_back(Action::Synthesize { sentence: id, text });
    }

    fn on_tts(&mut self, now: Timestamp, sentence: u64, event: TtsEvent) {
        let Some(reply) = self.reply.as_mut() else { return };
        let Some(pos) = reply.sentences.iter().position(|s| s.id == sentence) else { return };
        match event {
            TtsEvent::Audio(audio) => {
                if let Some((ended, latency)) = reply.latency.as_mut().filter(|(_, l)| l.first_audio_ms == 0) {
                    latency.first_audio_ms = ms_between(*ended, now).max(1);
                }
                let feeding = reply.feeding;
                let s = &mut reply.sentences[pos];
                if pos == feeding {
                    play(&mut self.actions, s, audio);
                } else {
                    s.waiting.push(audio);
                }
            }
            TtsEvent::Done | TtsEvent::Error(_) => {
                reply.sentences[pos].synthesised = true;
                if pos == reply.feeding {
                    self.advance(now);
                }
            }
        }
    }

    /// Queues what can be played next; finishes the reply when everything is played.
    fn advance(&mut self, now: Timestamp) {
        let Some(reply) = self.reply.as_mut() else { return };
        while let Some(s) = reply.sentences.get_mut(reply.feeding) {
            for audio in std::mem::take(&mut s.waiting) {
                play(&mut self.actions, s, audio);
            }
            if !s.synthesised {
                break;
            }
            // All its audio is queued: its end mark follows it.
            if s.queued == 0 {
                self.actions.push_back(Action::Mark(s.id * 2));
            }
            self.actions.push_back(Action::Mark(s.id * 2 + 1));
            reply.feeding += 1;
        }
        if !reply.is_done() {
            return;
        }
        let Some(reply) = self.reply.take() else { return };
        let after = reply.after.clone();
        self.record_reply(now, reply, false);
        match after {
            After::Listen => self.idle_at = Some(now + self.reprompt_after()),
            After::Hangup(reason) => self.hang_up(&reason),
            After::Transfer(destination) => {
                self.ending = Ending::Transferred;
                self.hung_up = true;
                self.actions.push_back(Action::Transfer { destination });
            }
        }
    }

    fn barge_in(&mut self, now: Timestamp) {
        let Some(mut reply) = self.reply.take() else { return };
        if reply.after != After::Listen && reply.llm.is_none() && reply.tools_running == 0 {
            // A goodbye, a voicemail message or a hand-over is not interrupted.
            self.reply = Some(reply);
            return;
        }
        self.barge_ins += 1;
        self.cancel(&reply);
        self.actions.push_back(Action::ClearPlayout);
        self.hear_front(&mut reply, now);
        reply.sentences.clear();
        self.record_reply(now, reply, true);
    }

    /// Adds to what the caller heard the words of the sentence playing at `now`, as far as
    /// it played.
    fn hear_front(&self, reply: &mut Reply, now: Timestamp) {
        if let Some(front) = reply.sentences.front().filter(|s| s.started.is_some()) {
            let played = ms_between(front.started.unwrap_or(now), now);
            let total = (front.queued / self.format.bytes_per_ms(1).max(1)) as u64;
            let heard = heard_prefix(&front.text, played, total);
            push_words(&mut reply.heard, &heard);
        }
    }

    fn cancel(&mut self, reply: &Reply) {
        if reply.llm.is_some() {
            self.actions.push_back(Action::CancelLlm);
        }
        if !reply.sentences.is_empty() {
            self.actions.push_back(Action::CancelTts);
        }
    }

    /// Writes a finished or cut-off reply into the transcript (what the caller heard) and the
    /// model's context (what it heard that is not there yet).
    fn record_reply(&mut self, _now: Timestamp, reply: Reply, interrupted: bool) {
        if let Some((_, latency)) = reply.latency.filter(|(_, l)| l.first_frame_ms > 0) {
            self.latencies.push(latency);
            reply.span.in_scope(|| {
                tracing::info!(
                    final_transcript_ms = latency.final_transcript_ms,
                    first_token_ms = latency.first_token_ms,
                    first_audio_ms = latency.first_audio_ms,
                    first_frame_ms = latency.first_frame_ms,
                    interrupted,
                    "turn answered"
                );
            });
        }
        if reply.heard.is_empty() {
            return;
        }
        let at_ms = ms_between(self.start, reply.started_at);
        self.transcript.push(Line { role: "bot", text: reply.heard.clone(), at_ms, interrupted });
        let fresh: Vec<&str> = reply.heard.split_whitespace().skip(reply.context_words).collect();
        if reply.in_context && !fresh.is_empty() {
            self.messages.push(Message::text(Role::Assistant, fresh.join(" ")));
        }
    }

    /// A machine answered: the reply in progress is dropped, then `message` is spoken and the
    /// call ends (`reason`), or with no message it ends at once.
    fn leave_voicemail(&mut self, now: Timestamp, message: &str, reason: &str) {
        if let Some(old) = self.reply.take() {
            self.cancel(&old);
            self.actions.push_back(Action::ClearPlayout);
            self.record_reply(now, old, true);
        }
        self.ending = Ending::Voicemail;
        if message.trim().is_empty() {
            self.hang_up(reason);
        } else {
            self.say(now, message, After::Hangup(reason.into()));
        }
    }

    fn say(&mut self, now: Timestamp, text: &str, after: After) {
        let mut reply = Reply::new(now, after);
        reply.pending = text.to_string();
        self.reply = Some(reply);
        self.cut_sentences(true);
        self.advance(now);
    }

    fn hang_up(&mut self, reason: &str) {
        if self.ending == Ending::Ongoing {
            self.ending = Ending::Hangup;
        }
        self.hung_up = true;
        self.actions.push_back(Action::Hangup { reason: reason.to_string() });
    }
}

/// Queues a sentence's audio for playing, after its start mark if it is its first.
fn play(actions: &mut VecDeque<Action>, s: &mut Sentence, audio: Vec<u8>) {
    if s.queued == 0 {
        actions.push_back(Action::Mark(s.id * 2));
    }
    s.queued += audio.len();
    actions.push_back(Action::Play(audio));
}

/// Where the first complete sentence in `text` ends (after its punctuation), if any.
fn sentence_end(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let boundary = matches!(b, b'.' | b'!' | b'?' | b';' | b'\n') || (b == b':' && i > 40);
        if boundary && bytes.get(i + 1).is_some_and(|n| n.is_ascii_whitespace()) {
            let before = &text[..i];
            let word = before.rsplit(|c: char| c.is_whitespace()).next().unwrap_or("");
            // "Dr." or "3." is not the end of a sentence; a short first sentence waits.
            if b == b'.' && (word.len() <= 2 && word.chars().next().is_some_and(char::is_uppercase) || word.chars().all(|c| c.is_ascii_digit())) {
                continue;
            }
            if before.trim().chars().count() < 4 {
                continue;
            }
            return Some(i + 1);
        }
    }
    None
}

/// The words of `text` the caller heard after `played_ms` of its `total_ms`.
fn heard_prefix(text: &str, played_ms: u64, total_ms: u64) -> String {
    if total_ms == 0 || played_ms >= total_ms {
        return if played_ms > 0 { text.to_string() } else { String::new() };
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    let n = (words.len() as u64 * played_ms / total_ms) as usize;
    words[..n.min(words.len())].join(" ")
}

fn push_words(into: &mut String, text: &str) {
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    if !into.is_empty() {
        into.push(' ');
    }
    into.push_str(text);
}

fn ms_between(from: Timestamp, to: Timestamp) -> u64 {
    to.as_micros().saturating_sub(from.as_micros()) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ToolConfig, ToolKind};
    use crate::provider::{TokenUsage, ToolOutput};

    fn bot() -> BotConfig {
        let mut bot = BotConfig::from_json(br#"{"name":"t","greeting":"Hello there! How can I help?","system_prompt":"Be brief."}"#).expect("bot");
        bot.idle.reprompt_after_seconds = 5;
        bot
    }

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn drain(c: &mut Conversation) -> Vec<Action> {
        std::iter::from_fn(|| c.poll_action()).collect()
    }

    /// Plays every queued sentence to its end: synthesis done, marks reached at `now`.
    fn speak_all(c: &mut Conversation, actions: &[Action], now: Timestamp) -> Vec<Action> {
        let sentences: Vec<u64> = actions.iter().filter_map(|a| if let Action::Synthesize { sentence, .. } = a { Some(*sentence) } else { None }).collect();
        let mut out = Vec::new();
        for id in &sentences {
            c.on_event(now, Event::Tts { sentence: *id, event: TtsEvent::Audio(vec![0xff; 1600]) });
            c.on_event(now, Event::Tts { sentence: *id, event: TtsEvent::Done });
        }
        out.extend(drain(c));
        for id in sentences {
            c.on_mark(now, id * 2);
            c.on_mark(now, id * 2 + 1);
        }
        out.extend(drain(c));
        out
    }

    fn caller_says(c: &mut Conversation, from: u64, to: u64, text: &str) -> Vec<Action> {
        c.on_turn(at(from), TurnEvent::Started { at: at(from) });
        c.on_turn(at(to + 700), TurnEvent::Ended { speech_started: at(from), speech_ended: at(to), decided_at: at(to + 700) });
        c.on_event(at(to + 750), Event::Stt(SttEvent::Final { text: text.into(), end_of_turn: false }));
        drain(c)
    }

    fn llm_turn(actions: &[Action]) -> (u64, ChatRequest) {
        actions.iter().find_map(|a| if let Action::Llm { turn, request } = a { Some((*turn, request.clone())) } else { None }).expect("an LLM request")
    }

    #[test]
    fn greeting_is_spoken_sentence_by_sentence_and_transcribed() {
        let mut c = Conversation::new(&bot(), AudioFormat::Mulaw8k, Vec::new(), at(0));
        c.start(at(0));
        let actions = drain(&mut c);
        let texts: Vec<&str> = actions.iter().filter_map(|a| if let Action::Synthesize { text, .. } = a { Some(text.as_str()) } else { None }).collect();
        assert_eq!(texts, ["Hello there!", "How can I help?"]);
        let played = speak_all(&mut c, &actions, at(100));
        assert_eq!(played.iter().filter(|a| matches!(a, Action::Play(_))).count(), 2);
        // Marks frame each sentence: start, end, start, end, in order.
        let marks: Vec<u64> = actions.iter().chain(&played).filter_map(|a| if let Action::Mark(m) = a { Some(*m) } else { None }).collect();
        assert_eq!(marks.len(), 4);
        assert!(marks.windows(2).all(|w| w[0] < w[1]), "{marks:?}");
        assert_eq!(c.transcript(), [Line { role: "bot", text: "Hello there! How can I help?".into(), at_ms: 0, interrupted: false }]);
        assert!(!c.bot_active());
    }

    #[test]
    fn a_caller_turn_is_answered_and_its_latency_recorded() {
        let mut c = Conversation::new(&bot(), AudioFormat::Mulaw8k, Vec::new(), at(0));
        c.start(at(0));
        let greeting = drain(&mut c);
        speak_all(&mut c, &greeting, at(10));
        let actions = caller_says(&mut c, 1_000, 2_000, "What are your hours?");
        assert_eq!(actions[0], Action::SttFinalize);
        let (turn, request) = llm_turn(&actions);
        assert_eq!(request.messages.iter().map(|m| m.role).collect::<Vec<_>>(), [Role::System, Role::Assistant, Role::User]);
        assert_eq!(request.messages[2].content, "What are your hours?");
        for token in ["We are ", "open nine", " to five. ", "Anything else?"] {
            c.on_event(at(3_000), Event::Llm { turn, event: LlmEvent::Token(token.into()) });
        }
        c.on_event(at(3_100), Event::Llm { turn, event: LlmEvent::Done { usage: TokenUsage { prompt_tokens: 20, completion_tokens: 9, ..TokenUsage::default() } } });
        let actions = drain(&mut c);
        let sentences: Vec<(u64, String)> = actions.iter().filter_map(|a| if let Action::Synthesize { sentence, text } = a { Some((*sentence, text.clone())) } else { None }).collect();
        assert_eq!(sentences.iter().map(|s| s.1.as_str()).collect::<Vec<_>>(), ["We are open nine to five.", "Anything else?"]);
        // The second sentence's audio arrives first: it waits for the first.
        c.on_event(at(3_200), Event::Tts { sentence: sentences[1].0, event: TtsEvent::Audio(vec![1; 800]) });
        assert!(drain(&mut c).is_empty());
        c.on_event(at(3_300), Event::Tts { sentence: sentences[0].0, event: TtsEvent::Audio(vec![0; 800]) });
        c.on_event(at(3_300), Event::Tts { sentence: sentences[0].0, event: TtsEvent::Done });
        let actions = drain(&mut c);
        assert_eq!(actions.iter().filter_map(|a| if let Action::Play(p) = a { Some(p[0]) } else { None }).collect::<Vec<_>>(), [0, 1]);
        c.on_mark(at(3_320), sentences[0].0 * 2);
        c.on_event(at(3_400), Event::Tts { sentence: sentences[1].0, event: TtsEvent::Done });
        c.on_mark(at(3_420), sentences[0].0 * 2 + 1);
        c.on_mark(at(3_420), sentences[1].0 * 2);
        c.on_mark(at(3_520), sentences[1].0 * 2 + 1);
        assert_eq!(c.transcript().last().map(|l| l.text.as_str()), Some("We are open nine to five. Anything else?"));
        assert_eq!(c.latencies(), [TurnLatency { final_transcript_ms: 750, first_token_ms: 1_000, first_audio_ms: 1_200, first_frame_ms: 1_320 }]);
        assert_eq!(c.usage().completion_tokens, 9);
    }

    #[test]
    fn barge_in_clears_playout_cancels_and_keeps_only_what_was_heard() {
        // A bot that stops at any speech.
        let mut b = bot();
        b.interruptions.min_speech_ms = 0;
        let mut c = Conversation::new(&b, AudioFormat::Mulaw8k, Vec::new(), at(0));
        c.start(at(0));
        let actions = drain(&mut c);
        let first = llm_free_sentence(&actions, 0);
        let second = llm_free_sentence(&actions, 1);
        // "Hello there!" is 1 s of audio; the caller speaks 500 ms into it.
        c.on_event(at(10), Event::Tts { sentence: first, event: TtsEvent::Audio(vec![0xff; 8_000]) });
        c.on_event(at(10), Event::Tts { sentence: first, event: TtsEvent::Done });
        drain(&mut c);
        c.on_mark(at(20), first * 2);
        c.on_turn(at(520), TurnEvent::Started { at: at(500) });
        let actions = drain(&mut c);
        assert!(actions.contains(&Action::ClearPlayout), "{actions:?}");
        assert!(actions.contains(&Action::CancelTts), "{actions:?}");
        assert_eq!(c.transcript(), [Line { role: "bot", text: "Hello".into(), at_ms: 0, interrupted: true }]);
        assert_eq!(c.barge_ins(), 1);
        // Late audio of the cancelled reply is dropped.
        c.on_event(at(600), Event::Tts { sentence: second, event: TtsEvent::Audio(vec![0; 160]) });
        assert!(drain(&mut c).is_empty());
        // The model hears what the caller heard.
        let actions = caller_says(&mut c, 500, 1_500, "Stop.");
        let (_, request) = llm_turn(&actions);
        assert_eq!(request.messages[1], Message::text(Role::Assistant, "Hello"));
    }

    /// A conversation whose greeting ("Hello there!", 1 s of audio) started playing at 20 ms.
    fn greeting_playing() -> (Conversation, u64) {
        let mut c = Conversation::new(&bot(), AudioFormat::Mulaw8k, Vec::new(), at(0));
        c.start(at(0));
        let actions = drain(&mut c);
        let first = llm_free_sentence(&actions, 0);
        c.on_event(at(10), Event::Tts { sentence: first, event: TtsEvent::Audio(vec![0xff; 8_000]) });
        c.on_event(at(10), Event::Tts { sentence: first, event: TtsEvent::Done });
        drain(&mut c);
        c.on_mark(at(20), first * 2);
        (c, first)
    }

    /// The caller's voiced frames from `from` ms for `ms`; the actions they caused.
    fn voiced(c: &mut Conversation, from: u64, ms: u64) -> Vec<Action> {
        c.on_turn(at(from), TurnEvent::Started { at: at(from) });
        let mut out = drain(c);
        for k in 0..ms / 20 {
            c.on_caller_frame(at(from + k * 20), true);
            out.extend(drain(c));
        }
        out
    }

    #[test]
    fn an_acknowledgement_over_the_bot_is_transcribed_but_neither_stops_it_nor_is_answered() {
        let (mut c, _) = greeting_playing();
        let actions = voiced(&mut c, 200, 360);
        assert!(!actions.contains(&Action::ClearPlayout), "{actions:?}");
        c.on_event(at(560), Event::Stt(SttEvent::Interim { text: "mm-hmm".into() }));
        c.on_turn(at(1_260), TurnEvent::Ended { speech_started: at(200), speech_ended: at(560), decided_at: at(1_260) });
        c.on_event(at(1_300), Event::Stt(SttEvent::Final { text: "Mm-hmm.".into(), end_of_turn: false }));
        let actions = drain(&mut c);
        assert!(!actions.iter().any(|a| matches!(a, Action::ClearPlayout | Action::Llm { .. } | Action::CancelTts)), "{actions:?}");
        assert!(c.bot_active(), "the greeting goes on");
        assert_eq!(c.transcript(), [Line { role: "caller", text: "Mm-hmm.".into(), at_ms: 200, interrupted: false }]);
        assert_eq!((c.barge_ins(), c.interruption_counts()), (0, (0, 0, 1)));
    }

    #[test]
    fn speech_that_lasts_stops_the_bot_once_it_has_lasted_the_bots_minimum() {
        let (mut c, _) = greeting_playing();
        // 500 ms by default: 480 ms of speech does not stop it, the next voiced frame does.
        let actions = voiced(&mut c, 200, 480);
        assert!(!actions.contains(&Action::ClearPlayout), "{actions:?}");
        assert!(c.on_caller_frame(at(700), true));
        assert!(drain(&mut c).contains(&Action::ClearPlayout));
        assert_eq!(c.barge_ins(), 1);
        // Silent frames in between do not count.
        let (mut c, _) = greeting_playing();
        voiced(&mut c, 200, 300);
        for k in 0..20 {
            assert!(!c.on_caller_frame(at(500 + k * 20), false));
        }
        assert_eq!(c.barge_ins(), 0);
    }

    #[test]
    fn a_word_that_is_not_an_acknowledgement_stops_the_bot_before_the_minimum() {
        let (mut c, _) = greeting_playing();
        voiced(&mut c, 200, 200);
        c.on_event(at(400), Event::Stt(SttEvent::Interim { text: "Okay".into() }));
        assert!(!drain(&mut c).contains(&Action::ClearPlayout), "an acknowledgement");
        c.on_event(at(420), Event::Stt(SttEvent::Interim { text: "Okay wait".into() }));
        assert!(drain(&mut c).contains(&Action::ClearPlayout), "'wait' stops it");
        c.on_turn(at(1_300), TurnEvent::Ended { speech_started: at(200), speech_ended: at(600), decided_at: at(1_300) });
        c.on_event(at(1_350), Event::Stt(SttEvent::Final { text: "Okay, wait.".into(), end_of_turn: false }));
        let (_, request) = llm_turn(&drain(&mut c));
        assert_eq!(request.messages.last().map(|m| m.content.as_str()), Some("Okay, wait."));
        assert_eq!(c.interruption_counts(), (0, 0, 0));
    }

    #[test]
    fn noise_that_stopped_the_bot_is_a_false_barge_in_and_a_short_real_turn_a_missed_one() {
        let (mut c, _) = greeting_playing();
        voiced(&mut c, 200, 600);
        assert_eq!(c.barge_ins(), 1);
        c.on_turn(at(1_500), TurnEvent::Ended { speech_started: at(200), speech_ended: at(800), decided_at: at(1_500) });
        c.on_timeout(at(1_500) + FINAL_WAIT);
        assert_eq!(c.interruption_counts(), (1, 0, 0), "no words came");

        // Words only, no interim results, too short to stop the bot: it stops when they come.
        let mut b = bot();
        b.interruptions.min_words = 0;
        let mut c = Conversation::new(&b, AudioFormat::Mulaw8k, Vec::new(), at(0));
        c.start(at(0));
        let first = llm_free_sentence(&drain(&mut c), 0);
        c.on_event(at(10), Event::Tts { sentence: first, event: TtsEvent::Audio(vec![0xff; 8_000]) });
        drain(&mut c);
        c.on_mark(at(20), first * 2);
        voiced(&mut c, 200, 300);
        c.on_turn(at(1_200), TurnEvent::Ended { speech_started: at(200), speech_ended: at(500), decided_at: at(1_200) });
        c.on_event(at(1_250), Event::Stt(SttEvent::Final { text: "No.".into(), end_of_turn: false }));
        let actions = drain(&mut c);
        assert!(actions.contains(&Action::ClearPlayout) && actions.iter().any(|a| matches!(a, Action::Llm { .. })), "{actions:?}");
        assert_eq!(c.interruption_counts(), (0, 1, 0));
    }

    #[test]
    fn a_hang_up_keeps_what_the_caller_heard_of_the_sentence_playing() {
        let (mut c, _) = greeting_playing();
        // Half of "Hello there!" played.
        c.finish(at(520));
        assert_eq!(c.transcript(), [Line { role: "bot", text: "Hello".into(), at_ms: 0, interrupted: true }]);
    }

    #[test]
    fn a_person_who_takes_the_call_silences_the_bot_until_they_leave() {
        let (mut c, _) = greeting_playing();
        // The person joins 500 ms into the greeting: it stops where the caller heard it.
        c.human_joined(at(520));
        let actions = drain(&mut c);
        assert!(actions.contains(&Action::ClearPlayout) && actions.contains(&Action::CancelTts), "{actions:?}");
        assert!(c.human());
        assert_eq!(c.barge_ins(), 0, "not the caller's barge-in");
        // The caller's words are transcribed and not answered; the person's are transcribed.
        let actions = caller_says(&mut c, 1_000, 2_000, "I was double charged");
        assert!(!actions.iter().any(|a| matches!(a, Action::Llm { .. })), "the bot stays silent: {actions:?}");
        c.human_said(at(2_500), "I can refund that now.");
        // No re-prompts while the person has the call, however long the silence.
        c.on_timeout(at(60_000));
        assert!(drain(&mut c).is_empty());
        assert!(c.deadline().is_none_or(|d| d > at(60_000)), "no deadline stays in the past");
        let roles: Vec<(&str, &str)> = c.transcript().iter().map(|l| (l.role, l.text.as_str())).collect();
        assert_eq!(roles, [("bot", "Hello"), ("caller", "I was double charged"), ("agent", "I can refund that now.")]);
        // They leave: the bot answers again, with what was said in its context.
        c.human_left(at(61_000));
        let actions = caller_says(&mut c, 62_000, 63_000, "Thanks, bye");
        let (_, request) = llm_turn(&actions);
        assert!(request.messages.iter().any(|m| m.role == Role::Assistant && m.content == "I can refund that now."), "{:?}", request.messages);
        assert!(request.messages.iter().any(|m| m.role == Role::User && m.content == "I was double charged"));
    }

    fn llm_free_sentence(actions: &[Action], n: usize) -> u64 {
        actions.iter().filter_map(|a| if let Action::Synthesize { sentence, .. } = a { Some(*sentence) } else { None }).nth(n).expect("sentence")
    }

    fn with_tools() -> BotConfig {
        let mut b = bot();
        b.greeting.clear();
        for (kind, name) in [(ToolKind::EndCall, None), (ToolKind::Http, Some("lookup")), (ToolKind::TransferCall, None)] {
            b.tools.push(ToolConfig {
                kind,
                name: name.map(str::to_string),
                description: String::new(),
                parameters: None,
                url: None,
                method: None,
                headers: Default::default(),
                secrets: Default::default(),
                timeout_ms: None,
                transfer_to: Some("+15551230000".into()),
            });
        }
        b
    }

    #[test]
    fn end_call_hangs_up_after_the_reply_is_heard() {
        let mut c = Conversation::new(&with_tools(), AudioFormat::Mulaw8k, Vec::new(), at(0));
        c.start(at(0));
        let (turn, _) = llm_turn(&caller_says(&mut c, 100, 900, "Bye."));
        c.on_event(at(1_700), Event::Llm { turn, event: LlmEvent::Token("Goodbye!".into()) });
        let call = ToolCall { id: "c1".into(), name: "end_call".into(), arguments: r#"{"reason":"caller done"}"#.into() };
        c.on_event(at(1_700), Event::Llm { turn, event: LlmEvent::ToolCall(call) });
        c.on_event(at(1_700), Event::Llm { turn, event: LlmEvent::Done { usage: TokenUsage::default() } });
        let actions = drain(&mut c);
        assert!(!actions.iter().any(|a| matches!(a, Action::Hangup { .. })), "not before the goodbye is heard");
        let played = speak_all(&mut c, &actions, at(1_800));
        assert_eq!(played.last(), Some(&Action::Hangup { reason: "end_call: caller done".into() }));
        assert_eq!(c.ending(), Ending::Hangup);
    }

    #[test]
    fn http_tools_run_and_their_result_goes_back_to_the_model() {
        let mut c = Conversation::new(&with_tools(), AudioFormat::Mulaw8k, Vec::new(), at(0));
        c.start(at(0));
        let (turn, _) = llm_turn(&caller_says(&mut c, 100, 900, "Where is my order?"));
        let call = ToolCall { id: "c7".into(), name: "lookup".into(), arguments: r#"{"order":"42"}"#.into() };
        c.on_event(at(1_700), Event::Llm { turn, event: LlmEvent::ToolCall(call.clone()) });
        c.on_event(at(1_700), Event::Llm { turn, event: LlmEvent::Done { usage: TokenUsage::default() } });
        assert_eq!(drain(&mut c), [Action::RunTool(call)]);
        c.on_event(at(1_900), Event::Tool { call_id: "c7".into(), output: ToolOutput { content: "shipped".into(), failed: false } });
        let (_, request) = llm_turn(&drain(&mut c));
        let roles: Vec<Role> = request.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::System, Role::User, Role::Assistant, Role::Tool]);
        assert_eq!(request.messages[2].tool_calls[0].id, "c7");
        assert_eq!(request.messages[3].tool_call_id.as_deref(), Some("c7"));
        assert_eq!(request.messages[3].content, "shipped");
    }

    #[test]
    fn send_dtmf_presses_valid_keys_and_tells_the_model_what_happened() {
        let mut b = with_tools();
        b.tools.push(ToolConfig { kind: ToolKind::SendDtmf, ..b.tools[0].clone() });
        let mut c = Conversation::new(&b, AudioFormat::Mulaw8k, Vec::new(), at(0));
        c.start(at(0));
        let (turn, _) = llm_turn(&caller_says(&mut c, 100, 900, "Press one for sales."));
        for (id, digits) in [("k1", "1#"), ("k2", "12x")] {
            let call = ToolCall { id: id.into(), name: "send_dtmf".into(), arguments: format!(r#"{{"digits":"{digits}"}}"#) };
            c.on_event(at(1_700), Event::Llm { turn, event: LlmEvent::ToolCall(call) });
        }
        c.on_event(at(1_700), Event::Llm { turn, event: LlmEvent::Done { usage: TokenUsage::default() } });
        let actions = drain(&mut c);
        let keys: Vec<&Action> = actions.iter().filter(|a| matches!(a, Action::SendDtmf(_))).collect();
        assert_eq!(keys, [&Action::SendDtmf("1#".into())], "only valid keys are pressed");
        // The bot listens to what the menu says next; the model then reads what its keys did.
        let (_, request) = llm_turn(&caller_says(&mut c, 3_000, 3_800, "For sales, stay on the line."));
        let results: Vec<&str> = request.messages.iter().filter(|m| m.role == Role::Tool).map(|m| m.content.as_str()).collect();
        assert_eq!(results, ["Pressed 1#.", "`digits` must be 1 to 32 of 0-9, *, #, A-D."]);
    }

    #[test]
    fn handoff_passes_reason_and_summary_then_transfers_when_the_tool_has_a_number() {
        for transfer_to in [Some("+15551230000"), None] {
            let mut b = with_tools();
            b.tools.push(ToolConfig { kind: ToolKind::Handoff, name: None, transfer_to: transfer_to.map(str::to_string), ..b.tools[0].clone() });
            let mut c = Conversation::new(&b, AudioFormat::Mulaw8k, Vec::new(), at(0));
            c.start(at(0));
            let (turn, _) = llm_turn(&caller_says(&mut c, 100, 900, "I want to speak to someone about my bill."));
            c.on_event(at(1_700), Event::Llm { turn, event: LlmEvent::Token("Let me pass you to the team.".into()) });
            let call = ToolCall { id: "h".into(), name: "handoff".into(), arguments: r#"{"reason":"billing dispute","summary":"Caller disputes the May bill."}"#.into() };
            c.on_event(at(1_700), Event::Llm { turn, event: LlmEvent::ToolCall(call) });
            c.on_event(at(1_700), Event::Llm { turn, event: LlmEvent::Done { usage: TokenUsage::default() } });
            let actions = drain(&mut c);
            assert!(actions.contains(&Action::Handoff { reason: "billing dispute".into(), summary: "Caller disputes the May bill.".into() }), "{actions:?}");
            let played = speak_all(&mut c, &actions, at(1_800));
            match transfer_to {
                Some(number) => {
                    assert_eq!(played.last(), Some(&Action::Transfer { destination: number.into() }));
                    assert_eq!(c.ending(), Ending::Transferred);
                }
                None => {
                    assert!(!played.iter().any(|a| matches!(a, Action::Transfer { .. } | Action::Hangup { .. })), "the bot carries on");
                    assert!(actions.iter().any(|a| matches!(a, Action::Llm { .. })), "and asks the model what to say next");
                }
            }
        }
    }

    #[test]
    fn transfer_uses_the_default_destination_after_speaking() {
        let mut c = Conversation::new(&with_tools(), AudioFormat::Mulaw8k, Vec::new(), at(0));
        c.start(at(0));
        let (turn, _) = llm_turn(&caller_says(&mut c, 100, 900, "A person please."));
        c.on_event(at(1_700), Event::Llm { turn, event: LlmEvent::Token("Connecting you now.".into()) });
        let call = ToolCall { id: "t".into(), name: "transfer_call".into(), arguments: "{}".into() };
        c.on_event(at(1_700), Event::Llm { turn, event: LlmEvent::ToolCall(call) });
        c.on_event(at(1_700), Event::Llm { turn, event: LlmEvent::Done { usage: TokenUsage::default() } });
        let actions = drain(&mut c);
        let played = speak_all(&mut c, &actions, at(1_800));
        assert_eq!(played.last(), Some(&Action::Transfer { destination: "+15551230000".into() }));
        assert_eq!(c.ending(), Ending::Transferred);
    }

    #[test]
    fn silence_gets_reprompts_then_a_goodbye_and_a_hang_up() {
        let mut c = Conversation::new(&bot(), AudioFormat::Mulaw8k, Vec::new(), at(0));
        c.start(at(0));
        let greeting = drain(&mut c);
        speak_all(&mut c, &greeting, at(1_000));
        let mut now = 1_000;
        let mut said = Vec::new();
        for _ in 0..3 {
            let due = c.deadline().expect("idle deadline");
            assert!(due.as_micros() / 1000 >= now + 5_000, "re-prompt only after 5 s of silence");
            now = due.as_micros() / 1000;
            c.on_timeout(at(now));
            let actions = drain(&mut c);
            said.extend(actions.iter().filter_map(|a| if let Action::Synthesize { text, .. } = a { Some(text.clone()) } else { None }));
            let rest = speak_all(&mut c, &actions, at(now + 500));
            if let Some(Action::Hangup { reason }) = rest.last() {
                assert_eq!(reason, "idle");
                break;
            }
            now += 500;
        }
        assert_eq!(said, ["Are you still there?", "Are you still there?", "I'll let you go now.", "Goodbye."]);
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn keys_pressed_reach_the_transcript_and_hold_off_the_reprompt() {
        let mut c = Conversation::new(&bot(), AudioFormat::Mulaw8k, Vec::new(), at(0));
        c.start(at(0));
        let greeting = drain(&mut c);
        speak_all(&mut c, &greeting, at(1_000));
        assert_eq!(c.deadline(), Some(at(6_000)), "re-prompt 5 s after the greeting");
        c.on_dtmf(at(4_000), '5');
        c.on_dtmf(at(4_100), 'x'); // not a key
        assert_eq!(c.deadline(), Some(at(6_000)), "the entry is complete 2 s after its last key");
        c.on_dtmf(at(4_200), '#');
        assert_eq!(c.deadline(), Some(at(4_200)), "# completes it");
        let keys: Vec<(&str, u64)> = c.transcript().iter().filter(|l| l.role == "dtmf").map(|l| (l.text.as_str(), l.at_ms)).collect();
        assert_eq!(keys, [("5", 4_000), ("#", 4_200)]);
        c.on_timeout(at(4_200));
        // The language model reads the entry as the caller's message.
        let request = drain(&mut c).into_iter().find_map(|a| match a {
            Action::Llm { request, .. } => Some(request),
            _ => None,
        });
        assert_eq!(request.and_then(|r| r.messages.last().map(|m| m.content.clone())).as_deref(), Some("keypad: 5#"));
        for _ in 0..MAX_DTMF {
            c.on_dtmf(at(5_000), '1');
        }
        assert_eq!(c.transcript().iter().filter(|l| l.role == "dtmf").count(), MAX_DTMF as usize, "bounded");
    }

    #[test]
    fn keys_pressed_while_the_bot_answers_go_with_the_callers_next_words() {
        let mut c = Conversation::new(&bot(), AudioFormat::Mulaw8k, Vec::new(), at(0));
        c.start(at(0));
        drain(&mut c); // the greeting is being said
        c.on_dtmf(at(300), '7');
        c.on_timeout(at(2_300));
        assert!(!drain(&mut c).iter().any(|a| matches!(a, Action::Llm { .. })), "not over the greeting");
        let (_, request) = llm_turn(&caller_says(&mut c, 3_000, 3_800, "Sales please."));
        assert_eq!(request.messages.last().map(|m| m.content.as_str()), Some("keypad: 7\nSales please."));
        let caller: Vec<&str> = c.transcript().iter().filter(|l| l.role == "caller").map(|l| l.text.as_str()).collect();
        assert_eq!(caller, ["Sales please."], "the transcript keeps the words and the keys apart");
    }

    #[test]
    fn the_call_ends_at_its_maximum_duration() {
        let mut b = bot();
        b.max_call_seconds = 60;
        let mut c = Conversation::new(&b, AudioFormat::Mulaw8k, Vec::new(), at(0));
        c.start(at(0));
        drain(&mut c);
        c.on_timeout(at(59_999));
        assert!(!drain(&mut c).iter().any(|a| matches!(a, Action::Hangup { .. })));
        c.on_timeout(at(60_000));
        assert_eq!(drain(&mut c), [Action::Hangup { reason: "max_duration".into() }]);
    }

    #[test]
    fn a_turn_without_the_final_transcript_is_taken_after_a_wait() {
        let mut c = Conversation::new(&with_tools(), AudioFormat::Mulaw8k, Vec::new(), at(0));
        c.start(at(0));
        c.on_turn(at(100), TurnEvent::Started { at: at(100) });
        c.on_event(at(500), Event::Stt(SttEvent::Final { text: "hello".into(), end_of_turn: false }));
        assert!(!drain(&mut c).iter().any(|a| matches!(a, Action::Llm { .. })), "still speaking");
        c.on_turn(at(1_600), TurnEvent::Ended { speech_started: at(100), speech_ended: at(900), decided_at: at(1_600) });
        assert!(drain(&mut c).iter().any(|a| matches!(a, Action::Llm { .. })), "words and a turn end: answered");
    }

    #[test]
    fn a_turn_with_no_words_leaves_the_bot_listening_with_its_idle_timer() {
        let mut c = Conversation::new(&bot(), AudioFormat::Mulaw8k, Vec::new(), at(0));
        c.start(at(0));
        let greeting = drain(&mut c);
        speak_all(&mut c, &greeting, at(1_000));
        // A cough: a turn, then an empty final transcript.
        c.on_turn(at(2_000), TurnEvent::Started { at: at(2_000) });
        c.on_turn(at(3_000), TurnEvent::Ended { speech_started: at(2_000), speech_ended: at(2_300), decided_at: at(3_000) });
        c.on_event(at(3_100), Event::Stt(SttEvent::Final { text: String::new(), end_of_turn: true }));
        assert_eq!(drain(&mut c), [Action::SttFinalize]);
        let wait = c.deadline().expect("the final-transcript wait");
        assert_eq!(wait, at(4_500));
        c.on_timeout(wait);
        assert!(drain(&mut c).is_empty(), "nothing to answer");
        // The silence counts again: a re-prompt after 5 s.
        assert_eq!(c.deadline(), Some(at(9_500)));
        c.on_timeout(at(9_500));
        let said: Vec<String> = drain(&mut c).into_iter().filter_map(|a| if let Action::Synthesize { text, .. } = a { Some(text) } else { None }).collect();
        assert_eq!(said, ["Are you still there?"]);
    }

    #[test]
    fn a_machine_drops_the_held_greeting_and_hangs_up_or_leaves_the_message() {
        fn synthesized(actions: &[Action]) -> Vec<&str> {
            actions.iter().filter_map(|a| if let Action::Synthesize { text, .. } = a { Some(text.as_str()) } else { None }).collect()
        }
        // Hang up: nothing was heard, the outcome is voicemail.
        let mut c = Conversation::new(&bot(), AudioFormat::Mulaw8k, Vec::new(), at(0));
        c.start(at(0));
        drain(&mut c);
        c.on_machine(at(1_800), false);
        assert_eq!(drain(&mut c), [Action::CancelTts, Action::ClearPlayout, Action::Hangup { reason: "machine_detected".into() }]);
        assert_eq!(c.ending(), Ending::Voicemail);
        assert_eq!(c.transcript(), []);
        assert_eq!(c.deadline(), None);
        // Leave the voicemail message, then hang up once it is heard.
        let mut b = bot();
        b.answering_machine.voicemail_message = "Please call us back.".into();
        let mut c = Conversation::new(&b, AudioFormat::Mulaw8k, Vec::new(), at(0));
        c.start(at(0));
        drain(&mut c);
        c.on_machine(at(1_800), true);
        let actions = drain(&mut c);
        assert_eq!(synthesized(&actions), ["Please call us back."]);
        let played = speak_all(&mut c, &actions, at(5_000));
        assert_eq!(played.last(), Some(&Action::Hangup { reason: "voicemail_left".into() }));
        assert_eq!(c.transcript().iter().map(|l| l.text.as_str()).collect::<Vec<_>>(), ["Please call us back."]);
        assert_eq!(c.ending(), Ending::Voicemail);
        // With no voicemail message the greeting is left.
        let mut c = Conversation::new(&bot(), AudioFormat::Mulaw8k, Vec::new(), at(0));
        c.start(at(0));
        drain(&mut c);
        c.on_machine(at(1_800), true);
        assert_eq!(synthesized(&drain(&mut c)), ["Hello there!", "How can I help?"]);
    }

    #[test]
    fn sentences_end_at_punctuation_but_not_at_abbreviations() {
        assert_eq!(sentence_end("Hello there! How"), Some(12));
        assert_eq!(sentence_end("Dr. Smith is in. Ok"), Some(16));
        assert_eq!(sentence_end("It costs 3. dollars"), None);
        assert_eq!(sentence_end("No end yet"), None);
        assert_eq!(heard_prefix("one two three four", 500, 1000), "one two");
        assert_eq!(heard_prefix("one two", 0, 1000), "");
    }
}
