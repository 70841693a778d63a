//! The simulator as a [`Carrier`]: accepting calls, running each as a tokio task (ring, outcome,
//! CXML, CDR), and the call log and counters tests inspect.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cxb_contacts::E164;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::caller::Caller;
use super::cdr::{CARRIER, Callee, SimulatorCdr};
use super::config::{Outcome, SimulatorConfig};
use super::plan::{MAX_CXML_BYTES, Plan, read_plan};
use super::stream::{self, StreamCall};
use crate::carrier::{
    Answer, BoxFuture, CallRequest, CallState, Carrier, CarrierError, Cdr, CdrError, Disposition, Placed,
};

/// How far a call's CDR got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CdrDelivery {
    /// The call is live, or its CDR is being posted.
    Pending,
    /// A 2xx after `attempts` posts.
    Delivered { attempts: u32 },
    /// Given up after `attempts` posts (retries exhausted, or a 4xx other than 408/429).
    Failed { attempts: u32, last_error: String },
}

/// One call in the simulator's log. Instants are tokio's (virtual under a paused clock).
#[derive(Debug, Clone)]
pub struct CallRecord {
    /// The carrier call id (`sim-{instance}-{n}`).
    pub call_id: String,
    pub session: String,
    pub from: E164,
    pub to: E164,
    /// What the callee does (after the ring timeout turned a late answer into no-answer).
    pub outcome: Outcome,
    /// When `create_call` accepted the call.
    pub created: Instant,
    pub answered: Option<Instant>,
    pub ended: Option<Instant>,
    pub disposition: Option<Disposition>,
    /// The CDR's `cause`.
    pub cause: Option<&'static str>,
    /// Why, when something failed (a connect error, the CXML error, the unsupported verb).
    pub detail: Option<String>,
    /// From the answer to the first non-silent audio from the engine.
    pub answer_to_first_audio: Option<Duration>,
    /// `media` frames sent to and received from the engine, and marks echoed.
    pub media_sent: u64,
    pub media_received: u64,
    pub marks_echoed: u64,
    pub cdr: CdrDelivery,
}

/// Counters since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimulatorStats {
    /// Calls accepted by `create_call`.
    pub created: u64,
    /// Calls `create_call` refused (bad numbers, CXML or URLs).
    pub rejected: u64,
    /// Ringing or connected now, and the most at once.
    pub live: u64,
    pub peak_live: u64,
    /// Ended calls by what happened: a person answered, a machine answered, busy, no answer,
    /// network failure, hung up through the API before the answer.
    pub answered: u64,
    pub voicemail: u64,
    pub busy: u64,
    pub no_answer: u64,
    pub failed: u64,
    pub canceled: u64,
    pub cdr_delivered: u64,
    pub cdr_failed: u64,
}

/// The built-in carrier. See [the module](super).
#[derive(Debug)]
pub struct Simulator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: SimulatorConfig,
    http: reqwest::Client,
    /// `sim-{instance}-`: call ids of this instance (random, so two simulators never share ids).
    id_prefix: String,
    account_sid: String,
    /// Unix ms at `epoch`: wall times are derived from tokio's clock, the only clock used.
    epoch_ms: i64,
    epoch: Instant,
    registry: Mutex<Registry>,
    /// Calls whose task has not finished (live, or posting their CDR).
    busy: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Registry {
    /// The sequence number of `slots[0]`.
    first_seq: u64,
    next_seq: u64,
    slots: VecDeque<Slot>,
    stats: SimulatorStats,
}

#[derive(Debug)]
struct Slot {
    record: CallRecord,
    hangup: Arc<Notify>,
}

impl Registry {
    fn slot(&self, seq: u64) -> Option<&Slot> {
        self.slots.get(usize::try_from(seq.checked_sub(self.first_seq)?).ok()?)
    }

    fn slot_mut(&mut self, seq: u64) -> Option<&mut Slot> {
        self.slots.get_mut(usize::try_from(seq.checked_sub(self.first_seq)?).ok()?)
    }

    /// Forgets the oldest ended calls beyond `limit` (stopping at the first live one).
    fn prune(&mut self, limit: usize) {
        while self.slots.len() > limit && self.slots.front().is_some_and(|s| s.record.cdr != CdrDelivery::Pending) {
            self.slots.pop_front();
            self.first_seq += 1;
        }
    }
}

/// What the draw decided for a call.
#[derive(Debug)]
struct Draw {
    outcome: Outcome,
    ring: Duration,
    talk: Duration,
    reply: bool,
    stream_sid: String,
}

/// What the answered call runs.
#[derive(Debug)]
enum Script {
    Plan(Plan),
    Fetch(String),
}

/// How a call ended.
#[derive(Debug)]
struct Ending {
    disposition: Disposition,
    cause: &'static str,
    detail: Option<String>,
    answered: Option<Instant>,
    first_audio: Option<Duration>,
    media: (u64, u64, u64),
}

impl Ending {
    fn unanswered(disposition: Disposition, cause: &'static str) -> Ending {
        Ending { disposition, cause, detail: None, answered: None, first_audio: None, media: (0, 0, 0) }
    }

    fn answered(at: Instant, cause: &'static str, detail: Option<String>) -> Ending {
        Ending { answered: Some(at), detail, ..Ending::unanswered(Disposition::Answered, cause) }
    }
}

impl Simulator {
    /// A simulator with `config`, posting CDRs and fetching answer URLs with `http`. Needs no
    /// runtime to construct; calls run on the runtime `create_call` is awaited in.
    pub fn start(config: SimulatorConfig, http: reqwest::Client) -> Arc<Simulator> {
        let instance: u32 = rand::random();
        let epoch_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Arc::new(Simulator {
            inner: Arc::new(Inner {
                config,
                http,
                id_prefix: format!("sim-{instance:08x}-"),
                account_sid: format!("AC{:032x}", u128::from(instance)),
                epoch_ms,
                epoch: Instant::now(),
                registry: Mutex::new(Registry::default()),
                busy: watch::channel(0).0,
            }),
        })
    }

    /// The settings it runs with.
    pub fn config(&self) -> &SimulatorConfig {
        &self.inner.config
    }

    /// The counters.
    pub fn stats(&self) -> SimulatorStats {
        self.inner.registry().stats.clone()
    }

    /// The call log, oldest first (the most recent `log_limit` ended calls and all live ones).
    pub fn calls(&self) -> Vec<CallRecord> {
        self.inner.registry().slots.iter().map(|s| s.record.clone()).collect()
    }

    /// One call's record.
    pub fn call(&self, carrier_call_id: &str) -> Option<CallRecord> {
        let seq = self.inner.seq_of(carrier_call_id)?;
        self.inner.registry().slot(seq).map(|s| s.record.clone())
    }

    /// Resolves once no call is live and no CDR is being posted.
    pub async fn idle(&self) {
        let mut rx = self.inner.busy.subscribe();
        let _ = rx.wait_for(|&n| n == 0).await;
    }

    fn place(&self, call: &CallRequest) -> Result<Placed, CarrierError> {
        let inner = &self.inner;
        let checked = check(call);
        let mut reg = inner.registry();
        let (to, from, script) = match checked {
            Ok(ok) => ok,
            Err(e) => {
                reg.stats.rejected += 1;
                return Err(e);
            }
        };
        let seq = reg.next_seq;
        reg.next_seq += 1;
        let draw = draw(&inner.config, seq, &call.to, inner.config.scaled(call.ring_timeout));
        let call_id = format!("{}{seq}", inner.id_prefix);
        let hangup = Arc::new(Notify::new());
        reg.slots.push_back(Slot {
            record: CallRecord {
                call_id: call_id.clone(),
                session: call.session.clone(),
                from,
                to,
                outcome: draw.outcome,
                created: Instant::now(),
                answered: None,
                ended: None,
                disposition: None,
                cause: None,
                detail: None,
                answer_to_first_audio: None,
                media_sent: 0,
                media_received: 0,
                marks_echoed: 0,
                cdr: CdrDelivery::Pending,
            },
            hangup: hangup.clone(),
        });
        let stats = &mut reg.stats;
        stats.created += 1;
        stats.live += 1;
        stats.peak_live = stats.peak_live.max(stats.live);
        drop(reg);
        inner.busy.send_modify(|n| *n += 1);
        let job = Job { inner: inner.clone(), seq, call_id: call_id.clone(), call: call.clone(), draw, hangup };
        tokio::spawn(run(job, script));
        Ok(Placed { carrier_call_id: call_id })
    }
}

/// Checks a request as a carrier's API would.
fn check(call: &CallRequest) -> Result<(E164, E164, Script), CarrierError> {
    let bad = |message: String| CarrierError::Rejected { status: 400, message };
    let number = |value: &str, field: &str| match E164::parse(value, None) {
        Ok(n) if n.as_str() == value => Ok(n),
        _ => Err(bad(format!("`{field}` is not an E.164 number"))),
    };
    let to = number(&call.to, "to")?;
    let from = number(&call.from, "from")?;
    if call.ring_timeout.is_zero() {
        return Err(bad("`ring_timeout` must be positive".into()));
    }
    let http_url = |url: &str| {
        reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
    };
    if !http_url(&call.cdr_url) {
        return Err(bad("`cdr_url` is not an http(s) URL".into()));
    }
    let script = match &call.answer {
        Answer::Cxml(doc) => Script::Plan(read_plan(doc.as_bytes()).map_err(|e| bad(format!("invalid CXML: {e}")))?),
        Answer::Url(url) if http_url(url) => Script::Fetch(url.clone()),
        Answer::Url(_) => return Err(bad("the answer URL is not an http(s) URL".into())),
    };
    Ok((to, from, script))
}

/// The call's draws, from its own generator: seeded by `(seed, seq)` when a seed is set.
fn draw(config: &SimulatorConfig, seq: u64, to: &str, ring_timeout: Duration) -> Draw {
    let mut rng = match config.seed {
        Some(seed) => StdRng::seed_from_u64(seed ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        None => StdRng::from_os_rng(),
    };
    let [pick, ring_at, talk_at, reply_at]: [f64; 4] = std::array::from_fn(|_| rng.random());
    let stream_sid = format!("MZ{:032x}", rng.random::<u128>());
    let planned = config.rule_for(to).unwrap_or_else(|| config.mix.pick(pick));
    let ring = match planned {
        Outcome::Answer => config.ring.answer.at(ring_at),
        Outcome::Voicemail => config.ring.voicemail.at(ring_at),
        Outcome::Busy => config.ring.busy.at(ring_at),
        Outcome::Failed => config.ring.failed.at(ring_at),
        Outcome::NoAnswer => Duration::MAX,
    };
    let ring = config.scaled(ring);
    let (outcome, ring) = if ring >= ring_timeout { (Outcome::NoAnswer, ring_timeout) } else { (planned, ring) };
    Draw {
        outcome,
        ring,
        talk: config.scaled(config.talk.at(talk_at)),
        reply: reply_at < config.reply_chance,
        stream_sid,
    }
}

impl Inner {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock cannot leave the log inconsistent in a way that matters.
        self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn seq_of(&self, call_id: &str) -> Option<u64> {
        call_id.strip_prefix(self.id_prefix.as_str())?.parse().ok()
    }

    fn wall_ms(&self, at: Instant) -> i64 {
        let since = i64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(i64::MAX);
        self.epoch_ms.saturating_add(since)
    }

    fn hangup_of(&self, call_id: &str) -> Option<(bool, Arc<Notify>)> {
        let seq = self.seq_of(call_id)?;
        let reg = self.registry();
        let slot = reg.slot(seq)?;
        Some((slot.record.ended.is_none(), slot.hangup.clone()))
    }
}

/// A call's task.
#[derive(Debug)]
struct Job {
    inner: Arc<Inner>,
    seq: u64,
    call_id: String,
    call: CallRequest,
    draw: Draw,
    hangup: Arc<Notify>,
}

/// One call, from ringing to its CDR.
async fn run(job: Job, script: Script) {
    let Job { ref inner, seq, ref call, ref draw, ref hangup, .. } = job;
    let rang = tokio::select! {
        () = tokio::time::sleep(draw.ring) => true,
        () = hangup.notified() => false,
    };
    let ending = match (rang, draw.outcome) {
        (false, _) => Ending::unanswered(Disposition::Canceled, "canceled"),
        (true, Outcome::Busy) => Ending::unanswered(Disposition::Busy, "user_busy"),
        (true, Outcome::NoAnswer) => Ending::unanswered(Disposition::NoAnswer, "no_answer"),
        (true, Outcome::Failed) => Ending::unanswered(Disposition::Failed, "network_failure"),
        (true, Outcome::Answer | Outcome::Voicemail) => {
            let at = Instant::now();
            if let Some(slot) = inner.registry().slot_mut(seq) {
                slot.record.answered = Some(at);
            }
            answered(&job, script, at).await
        }
    };
    let cdr = finish(inner, seq, call, draw, ending);
    let delivery = match cdr {
        Some(cdr) => deliver(inner, &call.cdr_url, &cdr).await,
        None => CdrDelivery::Failed { attempts: 0, last_error: "the call left the log".into() },
    };
    {
        let mut reg = inner.registry();
        match delivery {
            CdrDelivery::Delivered { .. } => reg.stats.cdr_delivered += 1,
            _ => reg.stats.cdr_failed += 1,
        }
        if let Some(slot) = reg.slot_mut(seq) {
            slot.record.cdr = delivery;
        }
        let limit = inner.config.log_limit;
        reg.prune(limit);
    }
    inner.busy.send_modify(|n| *n = n.saturating_sub(1));
}

/// Runs the answered call's CXML.
async fn answered(job: &Job, script: Script, at: Instant) -> Ending {
    let Job { inner, call_id, draw, hangup, .. } = job;
    let config = &inner.config;
    let voicemail = draw.outcome == Outcome::Voicemail;
    let plan = match script {
        Script::Plan(plan) => plan,
        Script::Fetch(url) => tokio::select! {
            r = fetch_plan(job, &url) => match r {
                Ok(plan) => plan,
                Err((cause, detail)) => return Ending::answered(at, cause, Some(detail)),
            },
            () = hangup.notified() => return Ending::answered(at, "api_hangup", None),
        },
    };
    match plan {
        Plan::Hangup => Ending::answered(at, "cxml_hangup", None),
        Plan::Unsupported(verb) => Ending::answered(at, "unsupported_verb", Some(format!("<{verb}>"))),
        Plan::Service { .. } => {
            // No SIP here: the service is "connected" for as long as the callee would stay.
            let talk = if voicemail { config.scaled(config.voicemail_limit) } else { draw.talk };
            tokio::select! {
                () = tokio::time::sleep(talk) => Ending::answered(at, "service_ended", None),
                () = hangup.notified() => Ending::answered(at, "api_hangup", None),
            }
        }
        Plan::Stream { url, parameters } => {
            let caller = if voicemail {
                Caller::voicemail(config.scaled(config.voicemail_limit))
            } else {
                Caller::human(draw.talk, draw.reply)
            };
            let target = StreamCall {
                url: &url,
                parameters: &parameters,
                account_sid: &inner.account_sid,
                call_sid: call_id,
                stream_sid: &draw.stream_sid,
            };
            let report = stream::run(target, caller, at, config.connect_timeout, hangup).await;
            Ending {
                first_audio: report.first_audio,
                media: (report.media_sent, report.media_received, report.marks_echoed),
                ..Ending::answered(at, report.cause, report.detail)
            }
        }
    }
}

/// Fetches the CXML from the answer URL as a voice application request: a form POST with
/// Twilio's request parameters (`CallSid`, `AccountSid`, `From`, `To`, `Direction`,
/// `CallStatus`, `ApiVersion`) and Cloudonix's `Session`
/// (<https://www.twilio.com/docs/voice/twiml#request-parameters>; `../shared/reference/protocols.md`).
async fn fetch_plan(job: &Job, url: &str) -> Result<Plan, (&'static str, String)> {
    let Job { inner, call, call_id, .. } = job;
    let fields = [
        ("CallSid", call_id.as_str()),
        ("AccountSid", inner.account_sid.as_str()),
        ("From", call.from.as_str()),
        ("To", call.to.as_str()),
        ("Direction", "outbound-api"),
        ("CallStatus", "in-progress"),
        ("ApiVersion", "2010-04-01"),
        ("Session", call.session.as_str()),
    ];
    let body = fields
        .iter()
        .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, NON_ALPHANUMERIC)))
        .collect::<Vec<_>>()
        .join("&");
    let failed = |e: String| ("cxml_fetch_failed", e);
    let mut resp = inner
        .http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
        .timeout(inner.config.connect_timeout)
        .send()
        .await
        .map_err(|e| failed(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(failed(format!("HTTP {}", resp.status())));
    }
    let mut doc = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| failed(e.to_string()))? {
        if doc.len() + chunk.len() > MAX_CXML_BYTES {
            return Err(("cxml_invalid", format!("the answer is larger than {MAX_CXML_BYTES} bytes")));
        }
        doc.extend_from_slice(&chunk);
    }
    read_plan(&doc).map_err(|e| ("cxml_invalid", e.to_string()))
}

/// Records the end of the call and builds its CDR (`None` if the call already left the log).
fn finish(inner: &Inner, seq: u64, call: &CallRequest, draw: &Draw, ending: Ending) -> Option<SimulatorCdr> {
    let now = Instant::now();
    let mut reg = inner.registry();
    let stats = &mut reg.stats;
    stats.live = stats.live.saturating_sub(1);
    match (ending.disposition, draw.outcome) {
        (Disposition::Answered, Outcome::Voicemail) => stats.voicemail += 1,
        (Disposition::Answered, _) => stats.answered += 1,
        (Disposition::Busy, _) => stats.busy += 1,
        (Disposition::NoAnswer, _) => stats.no_answer += 1,
        (Disposition::Failed | Disposition::InvalidNumber, _) => stats.failed += 1,
        (Disposition::Canceled, _) => stats.canceled += 1,
    }
    let r = &mut reg.slot_mut(seq)?.record;
    r.ended = Some(now);
    r.answered = ending.answered;
    r.disposition = Some(ending.disposition);
    r.cause = Some(ending.cause);
    r.detail = ending.detail;
    r.answer_to_first_audio = ending.first_audio;
    (r.media_sent, r.media_received, r.marks_echoed) = ending.media;
    let answered_at = r.answered.map(|a| inner.wall_ms(a));
    let ended_at = inner.wall_ms(now);
    Some(SimulatorCdr {
        carrier: CARRIER.into(),
        call_id: r.call_id.clone(),
        session: Some(call.session.clone()),
        from: call.from.clone(),
        to: call.to.clone(),
        disposition: ending.disposition,
        callee: r.answered.map(|_| if draw.outcome == Outcome::Voicemail { Callee::Voicemail } else { Callee::Human }),
        cause: Some(ending.cause.to_string()),
        started_at: inner.wall_ms(r.created),
        answered_at,
        ended_at,
        duration_ms: answered_at.map_or(0, |a| ended_at - a),
        answer_to_first_audio_ms: r.answer_to_first_audio.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
    })
}

/// Posts the CDR, retrying like a carrier: on connection errors, 5xx, 408 and 429, with
/// doubling back-off (scaled by `time_scale`).
async fn deliver(inner: &Inner, url: &str, cdr: &SimulatorCdr) -> CdrDelivery {
    let config = &inner.config;
    let attempts = config.cdr_retries.saturating_add(1);
    let mut backoff = config.scaled(config.cdr_backoff);
    let mut last_error = String::new();
    for attempt in 1..=attempts {
        match inner.http.post(url).json(cdr).timeout(config.connect_timeout).send().await {
            Ok(r) if r.status().is_success() => return CdrDelivery::Delivered { attempts: attempt },
            Ok(r) if r.status().is_client_error() && !matches!(r.status().as_u16(), 408 | 429) => {
                return CdrDelivery::Failed { attempts: attempt, last_error: format!("HTTP {}", r.status()) };
            }
            Ok(r) => last_error = format!("HTTP {}", r.status()),
            Err(e) => last_error = e.to_string(),
        }
        if attempt < attempts {
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
        }
    }
    CdrDelivery::Failed { attempts, last_error }
}

impl Carrier for Simulator {
    fn name(&self) -> &'static str {
        CARRIER
    }

    fn create_call<'a>(&'a self, call: &'a CallRequest) -> BoxFuture<'a, Result<Placed, CarrierError>> {
        Box::pin(async move { self.place(call) })
    }

    fn hang_up<'a>(&'a self, carrier_call_id: &'a str) -> BoxFuture<'a, Result<(), CarrierError>> {
        Box::pin(async move {
            if let Some((true, hangup)) = self.inner.hangup_of(carrier_call_id) {
                hangup.notify_one();
            }
            Ok(())
        })
    }

    fn call_state<'a>(&'a self, carrier_call_id: &'a str) -> BoxFuture<'a, Result<CallState, CarrierError>> {
        Box::pin(async move {
            Ok(match self.inner.hangup_of(carrier_call_id) {
                Some((true, _)) => CallState::Live,
                Some((false, _)) => CallState::Ended,
                None => CallState::Unknown,
            })
        })
    }

    fn parse_cdr(&self, _headers: &[(String, String)], body: &[u8]) -> Result<Cdr, CdrError> {
        super::cdr::parse_cdr(body)
    }
}
