//! The provider contract: what the conversation asks of speech-to-text, the language model
//! and text-to-speech, and what they report back.
//!
//! Every provider session is a task on the call's worker runtime. Commands go to it without
//! blocking (a channel send or a task spawn); what it learns comes back as [`Event`]s through
//! the call's [`Events`] queue, which wakes the call's task. Dropping a task's handle cancels
//! it: that is how barge-in stops a reply mid-stream. Nothing here is `Send`: a call and its
//! providers live on one thread.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// A provider's task. Dropping it cancels the task.
pub type Job = compio::runtime::JoinHandle<()>;

/// The audio a provider takes or produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudioFormat {
    /// G.711 mu-law at 8 kHz, what most carriers send: passed through with no conversion.
    Mulaw8k,
    /// Signed 16-bit little-endian mono PCM at this many Hz.
    Pcm16(u32),
}

impl AudioFormat {
    /// Bytes in `ms` milliseconds of this audio (rounded down to whole samples: 22,050 Hz
    /// has 441 samples in 20 ms but a fraction in 1 ms).
    pub const fn bytes_per_ms(self, ms: u32) -> usize {
        match self {
            AudioFormat::Mulaw8k => 8 * ms as usize,
            AudioFormat::Pcm16(rate) => rate as usize * ms as usize / 1000 * 2,
        }
    }
}

/// What a provider reports to its call.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// From the speech-to-text session.
    Stt(SttEvent),
    /// From the language model request made for `turn`.
    Llm {
        /// The request's id, as given to [`LlmProvider::complete`].
        turn: u64,
        /// What happened.
        event: LlmEvent,
    },
    /// From the synthesis of sentence `sentence`.
    Tts {
        /// The request's id, as given to [`TtsProvider::synthesize`].
        sentence: u64,
        /// What happened.
        event: TtsEvent,
    },
    /// The turn-completion model's answer about the caller's pause number `pause`: the
    /// probability that they are done, or `None` when it could not tell (busy, failed).
    TurnVerdict {
        /// Which pause it was asked about.
        pause: u64,
        /// The probability that the caller finished their turn.
        probability: Option<f32>,
    },
    /// A tool the language model called has finished.
    Tool {
        /// The id the language model gave the call.
        call_id: String,
        /// What goes back to the language model.
        output: ToolOutput,
    },
}

/// What a speech-to-text session reports.
#[derive(Debug, Clone, PartialEq)]
pub enum SttEvent {
    /// A hypothesis that may still change.
    Interim {
        /// The words so far.
        text: String,
    },
    /// Final words for a stretch of audio. `end_of_turn` is set when the provider's own
    /// endpointing decided the speaker finished (Deepgram's `speech_final`).
    Final {
        /// The words.
        text: String,
        /// The provider saw the end of the utterance.
        end_of_turn: bool,
    },
    /// The provider's end-of-utterance marker with no new words (Deepgram's `UtteranceEnd`).
    UtteranceEnd,
    /// The session failed or closed before it was asked to.
    Error(String),
}

/// What a language model request reports.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmEvent {
    /// The next piece of the reply's text.
    Token(String),
    /// A complete tool call (arguments assembled from the stream).
    ToolCall(ToolCall),
    /// The reply is complete.
    Done {
        /// Tokens billed, when the server says.
        usage: TokenUsage,
    },
    /// The request failed.
    Error(String),
}

/// What a synthesis request reports.
#[derive(Debug, Clone, PartialEq)]
pub enum TtsEvent {
    /// The next piece of audio, in the provider's [`TtsProvider::output_format`].
    Audio(Vec<u8>),
    /// All the sentence's audio has been delivered.
    Done,
    /// The request failed.
    Error(String),
}

/// Tokens a language model request used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Tokens read.
    pub prompt_tokens: u64,
    /// Tokens written.
    pub completion_tokens: u64,
    /// Of the tokens read, those the provider served from its prompt cache.
    #[serde(default)]
    pub cached_tokens: u64,
    /// Of the tokens read, those the provider wrote into its prompt cache.
    #[serde(default)]
    pub cache_write_tokens: u64,
}

/// Who said a message in the language model's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The bot's instructions.
    System,
    /// The caller.
    User,
    /// The bot.
    Assistant,
    /// A tool's result.
    Tool,
}

/// One message of the language model's context (OpenAI's chat shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// The text.
    pub content: String,
    /// Tools the assistant called in this message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a tool result: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    /// A message with text only.
    pub fn text(role: Role, content: impl Into<String>) -> Message {
        Message { role, content: content.into(), tool_calls: Vec::new(), tool_call_id: None }
    }
}

/// A tool call the language model made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The model's id for the call.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments: a JSON object as text.
    pub arguments: String,
}

/// A tool the language model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// The tool's name.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: serde_json::Value,
}

/// A language model request: the context so far and the tools on offer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The conversation, system prompt first.
    pub messages: Vec<Message>,
    /// The tools the model may call.
    pub tools: Vec<ToolSpec>,
}

/// What a finished tool call gives back.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    /// The text the language model reads.
    pub content: String,
    /// Whether the tool failed (the text says why).
    pub failed: bool,
}

/// A speech-to-text provider.
pub trait SttProvider {
    /// The audio it takes; the call converts to it only when the carrier's differs.
    fn input_format(&self) -> AudioFormat;
    /// Opens a streaming session, connecting in the background. Events go to `events`.
    fn open(&self, events: Events) -> SttSession;
}

/// What an open speech-to-text session is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SttCommand {
    /// More of the caller's audio, in the provider's input format.
    Audio(Vec<u8>),
    /// The caller's turn ended: flush a final transcript for the audio so far.
    Finalize,
    /// The call is over: close the stream politely.
    Close,
}

/// A streaming speech-to-text session: commands in, events out through the call's queue.
#[derive(Debug)]
pub struct SttSession {
    commands: SttSender,
    _task: Option<Job>,
}

impl SttSession {
    /// A session whose task reads `commands`' other end. Dropping the session cancels it.
    pub fn new(commands: SttSender, task: Job) -> SttSession {
        SttSession { commands, _task: Some(task) }
    }

    /// Queues a command; never blocks.
    pub fn send(&self, command: SttCommand) {
        self.commands.send(command);
    }

    /// Queues the caller's audio (in the provider's input format), copied: no allocation
    /// once the queue's buffers have grown, no lock.
    pub fn send_audio(&self, audio: &[u8]) {
        self.commands.send_audio(audio);
    }
}

/// The call's commands to its speech-to-text task, both on the call's thread: a queue with no
/// lock, where consecutive audio joins one buffer and buffers the task hands back
/// ([`SttReceiver::recycle`]) are filled again, so steady audio allocates nothing.
pub fn stt_channel() -> (SttSender, SttReceiver) {
    let queue = Rc::new(SttQueue::default());
    (SttSender(queue.clone()), SttReceiver(queue))
}

#[derive(Default)]
struct SttQueue {
    commands: RefCell<VecDeque<SttCommand>>,
    spare: RefCell<Vec<Vec<u8>>>,
    waker: Wakeup,
    closed: Cell<bool>,
}

impl SttQueue {
    fn wake(&self) {
        self.waker.wake();
    }
}

/// The call's end of [`stt_channel`]; dropping it ends the task's reading.
pub struct SttSender(Rc<SttQueue>);

impl std::fmt::Debug for SttSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SttSender").field("queued", &self.0.commands.borrow().len()).finish()
    }
}

impl SttSender {
    /// Queues a command.
    pub fn send(&self, command: SttCommand) {
        self.0.commands.borrow_mut().push_back(command);
        self.0.wake();
    }

    /// Queues audio, joined to audio queued just before it.
    pub fn send_audio(&self, audio: &[u8]) {
        let mut commands = self.0.commands.borrow_mut();
        match commands.back_mut() {
            Some(SttCommand::Audio(queued)) => queued.extend_from_slice(audio),
            _ => {
                let mut buf = self.0.spare.borrow_mut().pop().unwrap_or_default();
                buf.extend_from_slice(audio);
                commands.push_back(SttCommand::Audio(buf));
            }
        }
        drop(commands);
        self.0.wake();
    }
}

impl Drop for SttSender {
    fn drop(&mut self) {
        self.0.closed.set(true);
        self.0.wake();
    }
}

/// The task's end of [`stt_channel`].
pub struct SttReceiver(Rc<SttQueue>);

impl std::fmt::Debug for SttReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SttReceiver").field("queued", &self.0.commands.borrow().len()).finish()
    }
}

impl SttReceiver {
    /// The next command, or `Pending` (the task is woken when one comes); `None` once the
    /// sender is gone and nothing is left.
    pub fn poll_recv(&self, cx: &mut std::task::Context<'_>) -> Poll<Option<SttCommand>> {
        if let Some(command) = self.0.commands.borrow_mut().pop_front() {
            return Poll::Ready(Some(command));
        }
        if self.0.closed.get() {
            return Poll::Ready(None);
        }
        self.0.waker.register(cx);
        Poll::Pending
    }

    /// The next command; `None` once the sender is gone and nothing is left.
    pub async fn recv(&self) -> Option<SttCommand> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Hands an audio buffer back for the sender to fill again.
    pub fn recycle(&self, mut buf: Vec<u8>) {
        let mut spare = self.0.spare.borrow_mut();
        if spare.len() < 4 {
            buf.clear();
            spare.push(buf);
        }
    }
}

/// A language model provider.
pub trait LlmProvider {
    /// Starts a streaming completion for `turn`. Events go to `events` tagged with `turn`;
    /// dropping the returned task cancels the request.
    fn complete(&self, turn: u64, request: ChatRequest, events: Events) -> Job;
}

/// A text-to-speech provider.
pub trait TtsProvider {
    /// The audio it produces.
    fn output_format(&self) -> AudioFormat;
    /// Starts synthesising one sentence. Audio comes to `events` tagged with `sentence`,
    /// then [`TtsEvent::Done`]; dropping the returned task cancels it.
    fn synthesize(&self, sentence: u64, text: String, events: Events) -> Job;
}

/// The call's event queue: providers push, the call's task takes. Each event carries the
/// instant it arrived, so the engine can measure its own latency from a provider's event to
/// the next action on the wire.
#[derive(Debug, Clone, Default)]
pub struct Events(Rc<Queue>);

#[derive(Default)]
struct Queue {
    events: RefCell<VecDeque<(Instant, Event)>>,
    waker: Wakeup,
}

/// The one task a single-thread queue wakes: registered by its reader, woken by a push.
#[derive(Default)]
struct Wakeup(Cell<Option<Waker>>);

impl Wakeup {
    /// Remembers the reader's task (keeping the one held if it is the same).
    fn register(&self, cx: &std::task::Context<'_>) {
        match self.0.take() {
            Some(w) if w.will_wake(cx.waker()) => self.0.set(Some(w)),
            _ => self.0.set(Some(cx.waker().clone())),
        }
    }

    /// Wakes the reader, if one waits.
    fn wake(&self) {
        if let Some(w) = self.0.take() {
            w.wake();
        }
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").field("queued", &self.events.borrow().len()).finish()
    }
}

impl Events {
    /// An empty queue.
    pub fn new() -> Events {
        Events::default()
    }

    /// Queues `event` and wakes the call's task.
    pub fn push(&self, event: Event) {
        self.0.events.borrow_mut().push_back((Instant::now(), event));
        self.0.waker.wake();
    }

    /// The oldest queued event and when it arrived.
    pub fn pop(&self) -> Option<(Instant, Event)> {
        self.0.events.borrow_mut().pop_front()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.0.events.borrow().is_empty()
    }

    /// Resolves when an event is queued (at once if one is).
    pub fn ready(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if !self.0.events.borrow().is_empty() {
                return Poll::Ready(());
            }
            self.0.waker.register(cx);
            Poll::Pending
        })
    }
}

/// Why a provider could not be set up from a bot's config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The config names a provider this build does not have.
    #[error("unknown {kind} provider `{name}`")]
    Unknown {
        /// `stt`, `llm` or `tts`.
        kind: &'static str,
        /// The name given.
        name: String,
    },
    /// A setting is missing or wrong.
    #[error("{field}: {message}")]
    Invalid {
        /// Where, e.g. `stt.base_url`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl ProviderError {
    /// A bad setting.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ProviderError {
        ProviderError::Invalid { field: field.into(), message: message.into() }
    }
}
