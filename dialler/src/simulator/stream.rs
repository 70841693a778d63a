//! `<Connect><Stream>`: the carrier's side of a Twilio Media Stream, over a real WebSocket.
//!
//! Followed: Twilio, "Media Streams - WebSocket Messages"
//! (<https://www.twilio.com/docs/voice/media-streams/websocket-messages>), and
//! `../shared/reference/protocols.md`. The carrier sends `connected`, then `start` (account,
//! stream and call ids, `tracks`, `mediaFormat` audio/x-mulaw 8000 Hz mono, the `<Parameter>`s
//! as `customParameters`), then one `media` message every 20 ms (track `inbound`, `chunk` from 1,
//! `timestamp` in ms since the stream began, base64 mu-law payload) for the whole call, and
//! `stop` when the call ends. `sequenceNumber` counts every message after `connected`; numbers
//! are sent as strings, as Twilio does. From the bot it plays `media`, echoes each `mark` when
//! playback reaches it, and on `clear` drops the queued audio and echoes the dropped marks.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::caller::{Caller, FRAME, Playback, Tick, is_sound};

/// The largest message accepted from the bot.
const MAX_MESSAGE: usize = 1 << 20;
/// How long to wait for the other side's close after the call ended.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Who the stream belongs to.
#[derive(Debug)]
pub(crate) struct StreamCall<'a> {
    pub(crate) url: &'a str,
    pub(crate) parameters: &'a [(String, String)],
    pub(crate) account_sid: &'a str,
    pub(crate) call_sid: &'a str,
    pub(crate) stream_sid: &'a str,
}

/// How the stream went.
#[derive(Debug, Default)]
pub(crate) struct StreamReport {
    /// The call-end cause (see the CDR's documentation).
    pub(crate) cause: &'static str,
    /// What went wrong, for the call log.
    pub(crate) detail: Option<String>,
    /// From `answered` to the first non-silent audio from the bot.
    pub(crate) first_audio: Option<Duration>,
    pub(crate) media_sent: u64,
    pub(crate) media_received: u64,
    pub(crate) marks_echoed: u64,
}

impl StreamReport {
    fn failed(cause: &'static str, detail: String) -> StreamReport {
        StreamReport { cause, detail: Some(detail), ..StreamReport::default() }
    }
}

/// What the bot sends; anything else is ignored.
#[derive(Deserialize)]
struct FromBot<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    media: Option<BotMedia<'a>>,
    #[serde(default)]
    mark: Option<BotMark>,
}

#[derive(Deserialize)]
struct BotMedia<'a> {
    #[serde(borrow)]
    payload: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct BotMark {
    name: String,
}

/// Why the loop stopped.
enum End {
    /// We end the call: send `stop`, then close.
    Ours(&'static str),
    /// The bot closed the socket or it broke.
    Theirs(&'static str, Option<String>),
}

/// Runs the stream until the callee hangs up, the bot closes, or `hangup` is notified.
/// `answered` is when the call was answered; `caller` is the callee's script.
pub(crate) async fn run(
    call: StreamCall<'_>,
    mut caller: Caller,
    answered: Instant,
    connect_timeout: Duration,
    hangup: &Notify,
) -> StreamReport {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE)).max_frame_size(Some(MAX_MESSAGE));
    let connect = tokio_tungstenite::connect_async_with_config(call.url, Some(config), true);
    let mut ws = tokio::select! {
        r = tokio::time::timeout(connect_timeout, connect) => match r {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => return StreamReport::failed("stream_failed", e.to_string()),
            Err(_) => return StreamReport::failed("stream_failed", "connect timed out".into()),
        },
        () = hangup.notified() => return StreamReport { cause: "api_hangup", ..StreamReport::default() },
    };

    let mut report = StreamReport::default();
    let mut out = Outbox { seq: 0, call: &call, texts: Vec::new() };
    out.texts.push(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#.to_string());
    out.start();
    if let Err(e) = out.flush(&mut ws).await {
        return StreamReport::failed("stream_error", e.to_string());
    }

    let mut ticks = tokio::time::interval(FRAME);
    // Burst: a late tick is made up at once, so audio keeps its absolute 20 ms schedule.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut playback = Playback::default();
    let mut echoed: Vec<String> = Vec::new();
    let mut decoded: Vec<u8> = Vec::new();
    let end = loop {
        tokio::select! {
            () = hangup.notified() => break End::Ours("api_hangup"),
            _ = ticks.tick() => {
                let bot_speaking = playback.tick(&mut echoed);
                report.marks_echoed += out.marks(&mut echoed);
                let voicemail = caller.beeped();
                let hung_up = match caller.tick(bot_speaking) {
                    Tick::HangUp => true,
                    Tick::Audio(frame) => {
                        out.media(report.media_sent, frame);
                        report.media_sent += 1;
                        false
                    }
                };
                if let Err(e) = out.flush(&mut ws).await {
                    break End::Theirs("stream_error", Some(e.to_string()));
                }
                if hung_up {
                    break End::Ours(if voicemail { "voicemail_limit" } else { "callee_hangup" });
                }
            }
            msg = ws.next() => match msg {
                None | Some(Ok(Message::Close(_))) => break End::Theirs("bot_hangup", None),
                Some(Err(e)) => break End::Theirs("stream_error", Some(e.to_string())),
                Some(Ok(Message::Text(text))) => {
                    let Ok(event) = serde_json::from_str::<FromBot<'_>>(text.as_str()) else { continue };
                    match (event.event.as_ref(), event.media, event.mark) {
                        ("media", Some(media), _) => {
                            decoded.clear();
                            if BASE64.decode_vec(media.payload.as_bytes(), &mut decoded).is_err() {
                                continue;
                            }
                            report.media_received += 1;
                            let sound = is_sound(&decoded);
                            if sound && report.first_audio.is_none() {
                                report.first_audio = Some(answered.elapsed());
                            }
                            playback.push_audio(decoded.len(), sound);
                        }
                        ("mark", _, Some(mark)) => playback.push_mark(mark.name),
                        ("clear", _, _) => {
                            playback.clear(&mut echoed);
                            report.marks_echoed += out.marks(&mut echoed);
                            if let Err(e) = out.flush(&mut ws).await {
                                break End::Theirs("stream_error", Some(e.to_string()));
                            }
                        }
                        _ => {}
                    }
                }
                Some(Ok(_)) => {} // binary, ping (answered by tungstenite), pong
            },
        }
    };

    match end {
        End::Ours(cause) => {
            report.cause = cause;
            out.stop();
            let _ = out.flush(&mut ws).await;
            let _ = ws.close(None).await;
        }
        End::Theirs(cause, detail) => {
            report.cause = cause;
            report.detail = detail;
        }
    }
    // Let the close handshake finish (our close acknowledged, or theirs answered), bounded.
    let _ = tokio::time::timeout(CLOSE_WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    report
}

/// The carrier's outbound messages, numbered in order.
struct Outbox<'a> {
    seq: u64,
    call: &'a StreamCall<'a>,
    texts: Vec<String>,
}

impl Outbox<'_> {
    fn next_seq(&mut self) -> String {
        self.seq += 1;
        self.seq.to_string()
    }

    fn start(&mut self) {
        let c = self.call;
        let parameters: serde_json::Map<String, serde_json::Value> =
            c.parameters.iter().map(|(k, v)| (k.clone(), v.as_str().into())).collect();
        let start = serde_json::json!({
            "event": "start",
            "sequenceNumber": self.next_seq(),
            "start": {
                "accountSid": c.account_sid,
                "streamSid": c.stream_sid,
                "callSid": c.call_sid,
                "tracks": ["inbound"],
                "customParameters": parameters,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": c.stream_sid,
        });
        self.texts.push(start.to_string());
    }

    /// Media frame number `index` (from 0): `chunk` counts from 1, `timestamp` is its start.
    fn media(&mut self, index: u64, frame: &[u8]) {
        let seq = self.next_seq();
        let timestamp = index * FRAME.as_millis() as u64;
        let media = serde_json::json!({
            "event": "media",
            "sequenceNumber": seq,
            "media": {"track": "inbound", "chunk": (index + 1).to_string(), "timestamp": timestamp.to_string(),
                      "payload": BASE64.encode(frame)},
            "streamSid": self.call.stream_sid,
        });
        self.texts.push(media.to_string());
    }

    /// Echoes the marks in `names` (draining it); returns how many.
    fn marks(&mut self, names: &mut Vec<String>) -> u64 {
        let n = names.len() as u64;
        for name in names.drain(..) {
            let mark = serde_json::json!({
                "event": "mark", "sequenceNumber": self.next_seq(), "streamSid": self.call.stream_sid,
                "mark": {"name": name},
            });
            self.texts.push(mark.to_string());
        }
        n
    }

    fn stop(&mut self) {
        let c = self.call;
        let stop = serde_json::json!({
            "event": "stop", "sequenceNumber": self.next_seq(), "streamSid": c.stream_sid,
            "stop": {"accountSid": c.account_sid, "callSid": c.call_sid},
        });
        self.texts.push(stop.to_string());
    }

    /// Sends what is queued, flushing once.
    async fn flush<S>(&mut self, ws: &mut S) -> Result<(), tokio_tungstenite::tungstenite::Error>
    where
        S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
    {
        if self.texts.is_empty() {
            return Ok(());
        }
        for text in self.texts.drain(..) {
            ws.feed(Message::text(text)).await?;
        }
        ws.flush().await
    }
}
